"""`fathom serve --tenants FILE` as a user runs it (a subprocess: local Ray, Serve proxy, ingress
and model deployments): the tenancy path through Ray Serve, the shared actor and the model
replica; the banner's curl line with its key placeholder; edits to the file reported on the
console; a bad tenants file refused at start with the field named; and a quick idle Ctrl-C."""

import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from fathom.serve.launch import free_port
from support.serve_process import ENV, ROOT, ServeProcess
from support.tenancy_server import MODEL, write_tenants

TENANTS = {
    "alice": {"keys": ["sk-alice"], "limits": {"requestsPerMinute": 3}},
    "bob": {"keys": ["sk-bob"]},
    "narrow": {"keys": ["sk-narrow"], "models": ["other"]},
}


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("tenants") / "tenants.yaml"
    write_tenants(f, TENANTS)
    return f


@pytest.fixture(scope="module")
def server(tenants_file):
    s = ServeProcess("--tenants", str(tenants_file), "--max-model-len", "256").wait_ready()
    yield s
    s.stop()


def client(server, key):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_start_says_how_many_tenants(server):
    assert any("3 tenant(s) from" in line for line in server.lines), server.lines


def test_banner_curl_line_carries_the_key_placeholder(server, tenants_file):
    curl = next(line.strip() for line in server.lines if line.strip().startswith("curl "))
    assert '-H "Authorization: Bearer $FATHOM_API_KEY"' in curl
    assert f"(first: export FATHOM_API_KEY=<a tenant's key from {tenants_file}>)" in server.output
    out = subprocess.run(["bash", "-c", curl + " -sS"], check=False, capture_output=True, text=True, timeout=60,
                         env={**ENV, "FATHOM_API_KEY": "sk-bob"})
    assert out.returncode == 0 and '"chat.completion"' in out.stdout, out.stdout + out.stderr


def test_statuses_headers_and_usage_through_ray_serve(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-nobody").completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.PermissionDeniedError):
        client(server, "sk-narrow").completions.create(model=MODEL, prompt="x", max_tokens=1)
    alice = client(server, "sk-alice")
    raw = alice.completions.with_raw_response.create(model=MODEL, prompt="hello", max_tokens=3)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    usage = [raw.parse().usage]
    usage += [alice.completions.create(model=MODEL, prompt="hello", max_tokens=3).usage for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as e:
        alice.completions.create(model=MODEL, prompt="hello", max_tokens=3)
    assert int(e.value.response.headers["retry-after"]) >= 1
    with httpx.Client(base_url=server.url, headers={"authorization": "Bearer sk-alice"}) as h:
        [row] = h.get("/v1/usage").json()["data"]
    assert (row["tenant"], row["requests"]) == ("alice", 3)
    assert row["prompt_tokens"] == sum(u.prompt_tokens for u in usage)
    assert row["cached_prompt_tokens"] == sum(u.prompt_tokens_details.cached_tokens for u in usage)


def test_cache_salt_reaches_the_model_replica(server):
    prompt = "A long prompt that only alice has sent before, spanning several KV blocks. " * 2
    bob = client(server, "sk-bob")
    first = bob.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    again = bob.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_bad_tenants_file_is_refused_at_start(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: fathom.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\n"
                 "spec:\n  apiKeys: [{sha256: " + "a" * 64 + "}]\n  limits: {requestsPerMinut: 3}\n")
    proc = subprocess.run([sys.executable, "-m", "fathom.cli", "serve", "--port", str(free_port()),
                           "--tenants", str(f)], check=False, capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=180)
    assert proc.returncode != 0
    assert "requestsPerMinut" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def _wait_for_line(server, text: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in server.lines if text in line]
        if found:
            return found[-1]
        time.sleep(0.1)
    pytest.fail(f"no line with {text!r} in:\n{server.output}")


def test_tenants_file_edits_are_reported_on_the_console(server, tenants_file):
    good = tenants_file.read_text()
    tenants_file.write_text(good.replace("requestsPerMinute", "requestsPerMinut", 1))
    line = _wait_for_line(server, "tenants file not reloaded")
    assert line.startswith("fathom serve: error: tenants file not reloaded, the previous tenants stay in force:")
    assert "requestsPerMinut" in line
    bob = client(server, "sk-bob")
    assert bob.completions.create(model=MODEL, prompt="x", max_tokens=1).usage.completion_tokens == 1  # still served
    tenants_file.write_text(good)
    assert _wait_for_line(server, "tenants reloaded from").endswith(": 3 tenant(s)")


def test_idle_ctrl_c_stops_within_seconds(server):
    """Last in this module: it stops the module's server."""
    time.sleep(1)  # idle
    server.proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    assert server.proc.wait(60) == 0, server.output
    elapsed = time.monotonic() - t0
    assert server.lines[-1] == "fathom: stopped" and not any("waiting" in line for line in server.lines), server.output
    assert elapsed < 10, f"an idle stop took {elapsed:.1f}s"
    assert "Traceback" not in server.output and "(raylet)" not in server.output
