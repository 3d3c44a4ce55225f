"""`fathom serve` as a user runs it: a subprocess with the default demo model on a random
port; its banner, the README's curl and `openai` snippets as pasted, readiness, and a
graceful SIGTERM that lets an in-flight stream finish."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from fathom.serve.launch import free_port

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, port: int):
        self.port = port
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fathom.cli", "serve", "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C or SIGTERM"):
                self.ready.set()
        self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def server():
    s = ServerProcess(free_port())
    if not s.ready.wait(240) or s.proc.poll() is not None:
        s.proc.kill()
        pytest.fail(f"fathom serve did not start:\n{s.output}")
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait(30)


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_banner_shows_progress_url_and_a_working_curl_line(server):
    out = server.output
    assert "starting a local Ray instance (dashboard off, bound to 127.0.0.1)" in out
    assert "loading the built-in demo model as `fathom-demo`" in out and "model ready in" in out
    assert f"http://127.0.0.1:{server.port}/v1" in out
    curl = next(line.strip() for line in server.lines if line.strip().startswith("curl "))
    reply = json.loads(subprocess.run(["bash", "-c", curl], check=True, capture_output=True, text=True, timeout=60).stdout)
    assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] >= 1
    assert "Traceback" not in out


def test_readme_snippets_work_as_pasted(server):
    here = f"127.0.0.1:{server.port}"
    [curl] = [b for b in readme_blocks("bash") if "curl" in b]
    out = subprocess.run(["bash", "-c", curl.replace("127.0.0.1:8000", here)], check=True, capture_output=True, text=True,
                         timeout=60)
    assert json.loads(out.stdout)["choices"][0]["message"]["role"] == "assistant"
    [py] = readme_blocks("python")
    out = subprocess.run([sys.executable, "-c", py.replace("127.0.0.1:8000", here)], check=False, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "completion_tokens=" in out.stdout, out.stderr


def test_binds_loopback_and_is_ready(server):
    base = f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/health/ready").json()
    assert ready["status"] == "ready" and ready["model"] == "fathom-demo"
    listening = subprocess.run(["bash", "-c", f"ss -ltnH 'sport = :{server.port}' || true"], check=True, capture_output=True,
                               text=True).stdout
    if listening.strip():  # ss is available: the API socket is on loopback only
        assert all("127.0.0.1:" in line for line in listening.strip().splitlines()), listening


def test_sigterm_finishes_in_flight_stream_then_exits(server):
    base = f"http://127.0.0.1:{server.port}"
    body = {"model": "fathom-demo", "prompt": "drain me", "max_tokens": 600, "stream": True, "ignore_eos": True}
    started, events = threading.Event(), []

    def stream():
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(60)
    server.proc.send_signal(signal.SIGTERM)
    refused = None
    while reader.is_alive() and refused is None:
        try:
            r = httpx.post(f"{base}/v1/completions", json={"model": "fathom-demo", "prompt": "x"}, timeout=10)
            if r.status_code == 503:
                refused = r
        except httpx.TransportError:
            break
        time.sleep(0.2)
    reader.join(120)
    assert events[-1] == "data: [DONE]"  # the in-flight stream was not cut off
    assert refused is not None and refused.headers["retry-after"] and refused.json()["error"]["code"] == "shutting_down"
    assert server.proc.wait(120) == 0
    assert "shutting down" in server.output and "stopped" in server.output
