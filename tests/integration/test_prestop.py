"""The head pod's preStop hook (`python -m fathom.serve.prestop head`) against the real Serve app:
it returns only once the request in flight has finished, and from then on the ingress refuses
new requests with 503 + Retry-After and /health says 503 (so a load balancer moves on)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from fathom.api.serve import ServeSettings
from fathom.serve.launch import deploy, free_port, start_ray
from fathom.worker.demo import demo_checkpoint_dir

pytestmark = pytest.mark.slow  # a Serve app on the demo model: about a minute on 2 cores
PLATFORM = str(Path(__file__).resolve().parents[2] / "platform")


@pytest.fixture(scope="module")
def settings():
    # the random-weights demo (slower than the trained one) and a long answer: the stream must
    # still be running when the hook's process has started and looked (seconds on a busy CI box)
    s = ServeSettings(engine={"model": str(demo_checkpoint_dir()), "served_model_name": "fathom-demo",
                              "max_model_len": 2048, "max_num_seqs": 4}, port=free_port(), max_ongoing_requests=8)
    start_ray(s)
    deploy(s, show_progress=False)
    yield s
    serve.shutdown()
    ray.shutdown()


def test_prestop_waits_for_in_flight_requests_then_the_ingress_refuses(settings):
    base = f"http://127.0.0.1:{settings.port}"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join(filter(None, [PLATFORM, os.environ.get("PYTHONPATH")]))}
    body = {"model": "fathom-demo", "prompt": "Tell me", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=base, timeout=120) as http, http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: {"))  # generating
        t0 = time.monotonic()
        hook = subprocess.Popen([sys.executable, "-m", "fathom.serve.prestop", "head", "--timeout", "90"], env=env,
                                stderr=subprocess.PIPE, text=True)
        seen = next(line for line in hook.stderr if "requests in flight" in line)  # it saw ours and waits
        done = [line for line in lines if line.startswith("data: ")]
        assert done[-1] == "data: [DONE]" and hook.poll() is None  # the stream ended while the hook waited
        _, log = hook.communicate(timeout=100)
        log = seen + log
    assert hook.returncode == 0 and "drain incomplete" not in log, log
    assert time.monotonic() - t0 < 60
    refused = httpx.post(f"{base}/v1/completions", json={"model": "fathom-demo", "prompt": "x", "max_tokens": 1})
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert httpx.get(f"{base}/health").status_code == 503
