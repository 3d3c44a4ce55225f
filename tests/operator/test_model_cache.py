"""The model cache scripts, run for real (sh, curl, tar, flock) against a local HTTP server: two pods
on a node download once; an unwritable node directory falls back to the pod's own emptyDir; a
Shared cache's pods wait for the Job's marker. Paths are moved under tmp_path."""

import functools
import http.server
import io
import subprocess
import tarfile
import threading

import pytest

from fathom_operator import model_cache
from fathom_operator.reconcile import parse_spec


@pytest.fixture
def checkpoint_server():
    """Serves /ckpt.tar (config.json + a weights file); counts downloads."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, body in (("config.json", b"{}"), ("model.safetensors", b"w" * 4096)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data.getvalue())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ckpt.tar", hits
    server.shutdown()


def spec(uri: str, cache: dict):
    return parse_spec({"model": {"uri": uri, "cache": cache}})


def run(script: str, tmp_path, pod: str) -> subprocess.CompletedProcess:
    """The init container's script with /model-cache and /models moved under tmp_path."""
    (tmp_path / pod).mkdir(exist_ok=True)
    local = script.replace("/model-cache", str(tmp_path / "cache")).replace("/models", str(tmp_path / pod))
    return subprocess.run(["/bin/sh", "-c", "set -eu; " + local], check=False, capture_output=True, text=True,
                          timeout=60)


def test_node_cache_downloads_once_per_node(checkpoint_server, tmp_path):
    uri, hits = checkpoint_server
    s = spec(uri, {"type": "Node"})
    (tmp_path / "cache").mkdir()
    with_pods = [threading.Thread(target=run, args=(model_cache.node_script(s), tmp_path, f"pod{i}"))
                 for i in range(3)]
    for t in with_pods:
        t.start()
    for t in with_pods:
        t.join()
    assert len(hits) == 1  # the lock made the other two wait, then link
    for i in range(3):
        link = tmp_path / f"pod{i}" / s.model.cache_key
        assert link.is_symlink() and (link / "config.json").read_bytes() == b"{}"
    assert (tmp_path / "cache" / s.model.cache_key / model_cache.MARKER).exists()
    assert run(model_cache.node_script(s), tmp_path, "later").returncode == 0 and len(hits) == 1  # warm


def test_unwritable_node_directory_falls_back_to_the_pod(checkpoint_server, tmp_path):
    uri, _ = checkpoint_server
    s = spec(uri, {"type": "Node"})
    (tmp_path / "cache").write_text("")  # nothing can be created in it, even by root (CI runs as root)
    result = run(model_cache.node_script(s), tmp_path, "pod")
    assert result.returncode == 0 and "not writable" in result.stderr
    own = tmp_path / "pod" / s.model.cache_key
    assert not own.is_symlink() and (own / "model.safetensors").stat().st_size == 4096


def test_shared_cache_pods_wait_for_the_job(checkpoint_server, tmp_path):
    uri, hits = checkpoint_server
    s = spec(uri, {"type": "Shared"})
    (tmp_path / "cache").mkdir()
    job = model_cache.fill_job(s, {"name": "m-model-cache", "labels": {}}, "m")
    fill = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    waiting = subprocess.Popen(["/bin/sh", "-c", run_script(model_cache.wait_script(s), tmp_path, "pod")])
    assert run(fill.removeprefix("set -eu; "), tmp_path, "job").returncode == 0
    assert waiting.wait(timeout=30) == 0 and len(hits) == 1
    assert (tmp_path / "pod" / s.model.cache_key / "config.json").exists()
    assert run(fill.removeprefix("set -eu; "), tmp_path, "job").returncode == 0 and len(hits) == 1  # idempotent


def run_script(script: str, tmp_path, pod: str) -> str:
    (tmp_path / pod).mkdir(exist_ok=True)
    return functools.reduce(lambda s, kv: s.replace(*kv), [("/model-cache", str(tmp_path / "cache")),
                                                           ("/models", str(tmp_path / pod))], script)
