"""`fathom serve ORG/NAME --api-key KEY` as a user runs it, with no network: a Hugging Face hub
id served from a pre-filled local cache (HF_HUB_OFFLINE=1), one vLLM-style API key, and the
latency metrics of non-streamed requests (TTFT, TPOT) on /metrics."""

import shutil
import subprocess
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fathom.worker.demo import write_demo_checkpoint
from support.serve_process import ENV, ServeProcess

REPO = "acme/tiny-deepseek"
REVISION = "0123456789abcdef0123456789abcdef01234567"
KEY = "sk-local-test-key"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """The layout huggingface_hub keeps (models--org--name/{refs/main, snapshots/<rev>/}),
    holding a small checkpoint made here."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    write_demo_checkpoint(repo / "snapshots" / REVISION, seed=1)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def server(hub_cache):
    env = {**ENV, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "FATHOM_METRICS_PUSH_INTERVAL_S": "0.5"}
    env.pop("FATHOM_API_KEY", None)
    s = ServeProcess(REPO, "--api-key", KEY, "--max-model-len", "256", env=env).wait_ready()
    yield s
    s.stop()
    assert s.proc.returncode == 0 and "Traceback" not in s.output, s.output


def test_hub_id_is_served_from_the_cache_under_its_id(server):
    assert f"as `{REPO}`" in server.output and "/snapshots/" + REVISION in server.output
    models = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]] == [REPO]


def test_api_key_is_required_like_vllm(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    curl = next(line.strip() for line in server.lines if line.strip().startswith("curl "))
    assert '-H "Authorization: Bearer $FATHOM_API_KEY"' in curl
    out = subprocess.run(["bash", "-c", curl + " -sS"], check=False, capture_output=True, text=True, timeout=60,
                         env={**ENV, "FATHOM_API_KEY": KEY})
    assert out.returncode == 0 and '"chat.completion"' in out.stdout, out.stdout + out.stderr


def test_non_streamed_requests_record_ttft_and_tpot(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    for _ in range(3):
        reply = client.completions.create(model=REPO, prompt="hello", max_tokens=4, extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 4
    deadline = time.monotonic() + 30
    while True:
        counts = _counts(httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text)
        if counts.get("fathom_time_to_first_token_seconds_count", 0) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts["fathom_time_to_first_token_seconds_count"] >= 3, counts
    assert counts["fathom_time_per_output_token_seconds_count"] >= 3, counts


def _counts(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_count"):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out
