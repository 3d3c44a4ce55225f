"""`fathom serve --tenants FILE` as a user runs it (a subprocess: local Ray, Serve proxy, ingress
and model deployments): the tenancy path through Ray Serve, the shared actor and the model
replica, and a bad tenants file refused at start with the field named."""

import subprocess
import sys

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
def server(tmp_path_factory):
    f = tmp_path_factory.mktemp("tenants") / "tenants.yaml"
    write_tenants(f, TENANTS)
    s = ServeProcess("--tenants", str(f), "--max-model-len", "256").wait_ready()
    yield s
    s.stop()


def client(server, key):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_start_says_how_many_tenants(server):
    assert any("3 tenant(s) from" in line for line in server.lines), server.lines


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
