"""`fathom serve` as a user runs it: a subprocess with the default demo model on a random
port; its banner and curl line, readiness, a console free of Ray's output, and a graceful
SIGTERM that lets an in-flight stream finish with one count-down line. Failures: Ctrl-C while
loading, and a model replica that cannot start (the README's commands: test_readme.py)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    s = ServeProcess().wait_ready()
    yield s
    assert "Traceback" not in s.output, s.output
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait(30)


def test_banner_shows_progress_url_and_a_working_curl_line(server):
    out = server.output
    assert "starting a local Ray instance (dashboard off, bound to 127.0.0.1)" in out
    assert "loading the built-in demo model as `fathom-demo`" in out and "model ready in" in out
    assert "fathom: loading safetensors shards: 1/1 in " in out  # the replica's load progress, on this console
    for noise in ("WARNING", "Token authentication", "(raylet)", "INFO"):
        assert noise not in out, f"Ray's output on the console: {noise}"
    assert f"http://127.0.0.1:{server.port}/v1" in out
    curl = next(line.strip() for line in server.lines if line.strip().startswith("curl "))
    reply = json.loads(subprocess.run(["bash", "-c", curl], check=True, capture_output=True, text=True, timeout=60).stdout)
    assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] >= 1
    assert "Traceback" not in out


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out


def _listening_sockets(pids: set[int]) -> list[tuple[str, int, int]]:
    """(ip, port, pid) of every TCP socket in LISTEN state owned by `pids` (from /proc)."""
    owner = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[8:-1]] = pid
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in owner:
                continue
            hexip, hexport = cols[1].split(":")
            raw = bytes.fromhex(hexip)
            ip = ".".join(str(b) for b in raw[::-1]) if width == 8 else ("0.0.0.0" if not any(raw) else raw.hex())
            found.append((ip, int(hexport, 16), owner[cols[9]]))
    return found


def test_binds_loopback_and_exposes_no_dashboard_or_job_api(server):
    assert server.proc.poll() is None, server.output
    base = f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/health/ready").json()
    assert ready["status"] == "ready" and ready["model"] == "fathom-demo"
    sockets = _listening_sockets(_descendants(server.proc.pid))
    assert [ip for ip, port, _ in sockets if port == server.port] == ["127.0.0.1"]
    assert not [s for s in sockets if s[1] == 8265], "the Ray dashboard must not run"
    exposed = [(ip, port) for ip, port, _ in sockets if ip.count(".") == 3 and not ip.startswith("127.")]
    # issue 12: Ray's own sockets are on 127.0.0.1; what is not is the gRPC server Serve binds on every
    # interface in each replica (for calls between deployments, behind Ray's token)
    owners = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() for ip, _, pid in sockets
              if ip.count(".") == 3 and not ip.startswith("127.")}
    assert all(o.startswith("ray::ServeReplica:") for o in owners), owners
    assert "Serve replica's gRPC server" in server.output
    for ip, port in exposed:  # anything off loopback must refuse job submission without Ray's token
        host = "127.0.0.1" if ip == "0.0.0.0" else ip
        for path in ("/api/jobs/", "/api/job_agent/jobs/"):
            try:
                r = httpx.post(f"http://{host}:{port}{path}", json={"entrypoint": "echo pwned"}, timeout=3)
            except httpx.HTTPError:
                continue  # not HTTP (Ray's authenticated gRPC)
            assert r.status_code >= 400, (ip, port, path, r.status_code)


def test_port_in_use_is_a_clear_error_before_starting_ray(server):
    out = subprocess.run([sys.executable, "-m", "fathom.cli", "serve", "--port", str(server.port)], check=False,
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in out.stderr
    assert "starting a local Ray" not in out.stdout


def test_sigterm_finishes_in_flight_stream_then_exits(server):
    assert server.proc.poll() is None, server.output
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
    assert "shutting down" in server.output and server.lines[-1] == "fathom: stopped"
    waiting = [line for line in server.lines if "in-flight request(s)" in line]
    assert len(waiting) == 1 and re.match(r"fathom: waiting up to \d+s for \d+ in-flight request\(s\)", waiting[0])
    assert "fathom: in-flight requests finished" in server.lines
    assert "(raylet)" not in server.output and "ServeController" not in server.output


def test_ctrl_c_while_loading_stops_at_once_without_a_traceback():
    s = ServeProcess()
    while s.proc.poll() is None and not any("model: 1 starting" in line for line in s.lines):
        time.sleep(0.05)
    s.proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    assert s.proc.wait(60) == 130
    assert time.monotonic() - t0 < 15, s.output
    assert s.lines[-2:] == ["fathom: interrupted before the model was ready; stopping", "fathom: stopped"], s.output
    assert "Traceback" not in s.output and "KeyboardInterrupt" not in s.output


def test_a_model_replica_that_cannot_start_is_reported_and_the_server_exits(tmp_path):
    """A checkpoint that passes the checks before Ray (config.json, *.safetensors present) but
    whose weights are corrupt: its loader's error on the console, exit status 1, no retries."""
    from fathom.worker.demo import demo_checkpoint_dir

    ckpt = tmp_path / "corrupt"
    shutil.copytree(demo_checkpoint_dir(), ckpt)
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    s = ServeProcess(str(ckpt))
    assert s.proc.wait(180) == 1, s.output
    errors = [line for line in s.lines if line.startswith("fathom serve: error:")]
    assert errors == [("fathom serve: error: a model replica failed to start: SafetensorError: "
                       "Error while deserializing header: invalid header length")], s.output
    [log] = re.findall(r"the full error and Ray's output: (\S+)", s.output)
    assert "Traceback" in Path(log).read_text() and "Traceback" not in s.output
    assert "Retrying" not in s.output

