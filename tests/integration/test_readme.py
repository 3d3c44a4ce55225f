"""The README's fenced commands, run as a new user runs them, on a fresh copy of the repository
(its files only, in a directory with no ../shared beside it).

- `pip install ...` is given (this environment); `python -m pytest` is this suite itself;
- each `fathom serve ...` starts the server as written (on a free port instead of 8000), and
  the `curl` lines and `OpenAI` snippets after it, up to the next server, run against it as
  pasted (a server with none after it gets the first curl of the README); then SIGTERM stops it;
- `helm install ...` is checked with `helm lint --strict` and `helm template` with the same
  arguments (no cluster here);
- every other command, and the Python snippets that need no server, run and must succeed.

`fathom` is run as `python -m fathom.cli` of the copy (PYTHONPATH), so the copy's code is what runs.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
GIVEN = ("pip install", "python -m pytest")


def fenced_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", README, re.DOTALL)


def commands(text: str) -> list[str]:
    """Shell commands of a bash block: continuation lines joined, `a && b` split."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [c.strip() for line in joined.splitlines() if line.strip() for c in line.split("&&")]


def steps() -> list[tuple[str, str]]:
    """(kind, text): kind is serve, curl, openai, agent, helm, python or run. An `agent` snippet
    continues the quickstart's `client`; tests/integration/test_tool_calls.py runs it as pasted."""
    out = []
    for lang, text in fenced_blocks():
        if lang == "python":
            kind = "openai" if "OpenAI(" in text else "agent" if "client." in text else "python"
            out.append((kind, text))
            continue
        for cmd in commands(text):
            if cmd.startswith(GIVEN):
                continue
            kind = ("serve" if "fathom serve" in cmd else "curl" if cmd.startswith("curl ") else
                    "helm" if cmd.startswith("helm install") else "run")
            out.append((kind, cmd))
    return out


def server_groups() -> list[tuple[str, list[tuple[str, str]]]]:
    """Each `fathom serve` command with the client steps that follow it."""
    groups: list[tuple[str, list]] = []
    for kind, text in steps():
        if kind == "serve":
            groups.append((text, []))
        elif kind in ("curl", "openai") and groups:
            groups[-1][1].append((kind, text))
    first_curl = next(s for s in steps() if s[0] == "curl")
    return [(cmd, clients or [first_curl]) for cmd, clients in groups]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    """The repository's files (as `git clone` would give them) in a new directory."""
    dest = tmp_path_factory.mktemp("clone") / "fathom"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=False, capture_output=True)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:  # not a git checkout (an unpacked sdist): everything but local state
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", ".tools", "__pycache__", "*.egg-info"))
    assert not (dest.parent / "shared").exists() and not (dest.parent.parent / "shared").exists()
    return dest


def copy_env(copy: Path, **extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy / "platform"), str(copy / "operators")]), **extra}


def fathom_argv(cmd: str) -> tuple[dict, list[str]]:
    """`[VAR=value ...] fathom serve ARGS` -> (env assignments, python -m fathom.cli argv)."""
    words = shlex.split(cmd)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[:2] == ["fathom", "serve"], cmd
    return env, ["-m", "fathom.cli", *words[1:]]


def assert_printed_as_shown(snippet: str, stdout: str) -> None:
    """A snippet whose `print(...)` lines end in `# what it prints` printed exactly that, one line
    per print (`...` in the comment stands for anything): the README shows the model's real answer."""
    shown = re.findall(r"^print\(.*\)  # (.*)$", snippet, re.MULTILINE)
    if shown:
        patterns = [re.escape(s).replace(re.escape("..."), ".*") for s in shown]
        lines = stdout.splitlines()
        assert len(lines) == len(shown) and all(re.fullmatch(p, line) for p, line in zip(patterns, lines)), \
            (shown, lines)


@pytest.mark.parametrize(("serve_cmd", "clients"), server_groups(), ids=[g[0] for g in server_groups()])
def test_serve_commands_and_their_clients(fresh_copy, serve_cmd, clients):
    env, argv = fathom_argv(serve_cmd)
    server = ServeProcess(*argv[3:], cwd=fresh_copy, env=copy_env(fresh_copy, **env)).wait_ready()
    here = f"127.0.0.1:{server.port}"
    try:
        for kind, text in clients:
            if kind == "curl":
                out = subprocess.run(["bash", "-c", text.replace("127.0.0.1:8000", here)], check=False,
                                     capture_output=True, text=True, timeout=120, cwd=fresh_copy)
                assert out.returncode == 0 and '"choices"' in out.stdout, (text, out.stdout, out.stderr)
            else:
                out = subprocess.run([sys.executable, "-c", text.replace("127.0.0.1:8000", here)], check=False,
                                     capture_output=True, text=True, timeout=120, cwd=fresh_copy,
                                     env=copy_env(fresh_copy))
                assert out.returncode == 0 and "completion_tokens=" in out.stdout, out.stderr
                assert_printed_as_shown(text, out.stdout)
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output
    for noise in ("Traceback", "WARNING", "(raylet)", "ServeController", "SIGTERM received"):
        assert noise not in server.output, (noise, server.output)


def test_offline_snippet_and_other_commands(fresh_copy):
    ran = []
    for kind, text in steps():
        if kind == "python":  # fathom.LLM: TP=2, EP=2 on Ray rank workers
            out = subprocess.run([sys.executable, "-c", text], check=False, capture_output=True, text=True,
                                 timeout=300, cwd=fresh_copy, env=copy_env(fresh_copy))
            assert out.returncode == 0, out.stderr[-3000:]
            token_ids = re.search(r"\[([\d, ]+)\]\s*$", out.stdout.strip())
            assert token_ids and 1 <= len(token_ids.group(1).split(",")) <= 16, out.stdout  # max_tokens=16
        elif kind == "run":
            words = shlex.split(text)
            if words[0] == "python":
                words[0] = sys.executable
            out = subprocess.run(words, check=False, capture_output=True, text=True, timeout=120, cwd=fresh_copy,
                                 env=copy_env(fresh_copy))
            assert out.returncode == 0, (text, out.stderr)
        else:
            continue
        ran.append(text)
    assert any("fathom.LLM(" in t for t in ran) and "python -m fathom.tenancy.keys --new" in ran, ran


def test_helm_install_line_lints_and_renders_offline(fresh_copy, tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "helm"))
    from support.helm_support import find_helm

    [install] = [text for kind, text in steps() if kind == "helm"]
    args = shlex.split(install)[2:]  # helm install <args>
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "cache"), "HELM_CONFIG_HOME": str(tmp_path / "config"),
           "HELM_DATA_HOME": str(tmp_path / "data")}  # no repositories, nothing cached: as on a new machine
    chart = next(a for a in args if a.startswith("helm/"))
    for argv in (["lint", "--strict", chart], ["template", *args]):
        out = subprocess.run([find_helm(), *argv], check=False, capture_output=True, text=True, timeout=120,
                             cwd=fresh_copy, env=env)
        assert out.returncode == 0 and "[WARNING]" not in out.stdout, (argv, out.stdout, out.stderr)
    assert "kind: Deployment" in out.stdout and "name: fathom-operator" in out.stdout
