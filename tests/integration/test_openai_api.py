"""The HTTP API in-process (ASGI, no sockets, no Ray) with the official `openai` client over
the real engine on the demo model: request shapes, responses, streaming, errors."""

import json

import httpx
import openai
import pytest
import torch

from fathom.api.serve import ServeSettings
from fathom.serve.api import build_api
from fathom.serve.frontend import Frontend
from fathom.serve.model_server import ModelServer

MODEL = "fathom-demo"
MAX_LEN = 256


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    settings = ServeSettings(engine={"max_model_len": MAX_LEN, "max_num_seqs": 8},
                             max_ongoing_requests=8, max_request_body_bytes=64 * 1024)
    ms = ModelServer(settings)
    yield settings, ms
    ms.engine._stopping = True


@pytest.fixture
def app(server):
    settings, ms = server
    return build_api(Frontend(ms, settings))


@pytest.fixture
def client(app):
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fathom")
    return openai.AsyncOpenAI(base_url="http://fathom/v1", api_key="none", http_client=http, max_retries=0)


@pytest.fixture
def http(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fathom")


async def test_chat_non_stream_n_logprobs_usage(client):
    r = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=6, temperature=0, n=2, logprobs=True, top_logprobs=3,
    )
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy
    assert r.choices[0].finish_reason in ("length", "stop")
    lp = r.choices[0].logprobs.content
    assert 1 <= len(lp) <= 6 and len(lp[0].top_logprobs) == 3
    assert lp[0].logprob == pytest.approx(lp[0].top_logprobs[0].logprob)  # greedy = argmax
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_chat_stream_equals_non_stream(client):
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12,
              "temperature": 0.8, "seed": 7, "n": 2}
    whole = await client.chat.completions.create(**kw)
    stream = await client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    texts, roles, finish, usage = {0: "", 1: ""}, set(), {}, None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.id.startswith("chatcmpl-")
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            roles.add(c.delta.role)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert "assistant" in roles
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage.completion_tokens == whole.usage.completion_tokens


async def test_completions_prompt_forms_echo_stop(client, server):
    r = await client.completions.create(model=MODEL, prompt=["Hello", "World"], max_tokens=5, temperature=0)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    hello = server[1].engine.tokenizer.encode("Hello")
    ids = await client.completions.create(model=MODEL, prompt=[hello], max_tokens=5, temperature=0)
    assert ids.choices[0].text == r.choices[0].text  # token ids = the same prompt as text
    echo = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text == "Hello" + r.choices[0].text
    full = r.choices[0].text
    stop_at = next((ch for ch in full[1:] if ch.strip()), None)
    if stop_at is not None:
        s = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0, stop=[stop_at])
        assert s.choices[0].text == full[: full.index(stop_at, 1)] and s.choices[0].finish_reason == "stop"


async def test_completions_stream_logprobs(client):
    stream = await client.completions.create(model=MODEL, prompt="abc", max_tokens=8, temperature=0,
                                             logprobs=2, stream=True)
    tokens, text = [], ""
    async for chunk in stream:
        for c in chunk.choices:
            text += c.text
            if c.logprobs:
                tokens += c.logprobs.tokens
                assert all(top is None or len(top) <= 2 for top in c.logprobs.top_logprobs)
    whole = await client.completions.create(model=MODEL, prompt="abc", max_tokens=8, temperature=0, logprobs=2)
    assert text == whole.choices[0].text and tokens == whole.choices[0].logprobs.tokens


async def test_cached_tokens_reported_on_repeat(client):
    prompt = "A long shared system prompt that spans several KV blocks. " * 3
    first = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    again = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens > 32
    assert again.usage.prompt_tokens_details.cached_tokens >= 16
    assert again.usage.prompt_tokens_details.cached_tokens < again.usage.prompt_tokens


async def test_models_health_metrics(http, client):
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (await http.get("/health")).status_code == 200
    ready = await http.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["max_model_len"] == MAX_LEN
    await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    text = (await http.get("/metrics")).text
    assert 'fathom_requests_total{model="fathom-demo",status="200",tenant="default"}' in text
    assert "fathom_generation_tokens_total" in text and "fathom_e2e_request_latency_seconds_bucket" in text


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"[]", 400, None),
        (json.dumps({"model": MODEL, "messages": []}).encode(), 422, "messages"),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9}).encode(),
         422, "temperature"),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "bogus": 1}).encode(),
         422, "bogus"),
        (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "model"),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 300}]}).encode(), 400, "prompt"),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000}).encode(),
         400, "max_tokens"),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}).encode(), 413, None),
    ],
)
async def test_error_statuses_in_openai_format(http, body, status, param):
    r = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    assert "Traceback" not in r.text


async def test_errors_through_the_client(client, http):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError, match="n: Input should be less than or equal"):
        await client.completions.create(model=MODEL, prompt="x", n=99)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256"):
        await client.completions.create(model=MODEL, prompt=[1] * 300, stream=True)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        await client.completions.create(model=MODEL, prompt=[10**6])
    unknown = await http.get("/v1/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].startswith("GET /v1/nothing")
    assert (await http.get("/v1/completions")).status_code == 405
