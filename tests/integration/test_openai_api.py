"""The OpenAI API end to end: the official `openai` client over real HTTP against the Ray Serve
app (ingress + 2 model replicas of the random-weights demo checkpoint, whose outputs never close a
`<think>` on their own) on a random port, started once per module."""

import asyncio
import json

import httpx
import openai
import pytest
from ray import serve

from fathom.api.serve import ServeSettings
from fathom.serve.launch import deploy, free_port
from fathom.serve.router import prefix_key

MODEL = "fathom-demo"
MAX_LEN = 512


@pytest.fixture(scope="module")
def server(ray_local):
    from fathom.worker.demo import demo_checkpoint_dir

    settings = ServeSettings(
        engine={"model": str(demo_checkpoint_dir()), "served_model_name": MODEL, "max_model_len": MAX_LEN,
                "max_num_seqs": 8, "reasoning_parser": "deepseek_r1"},
        port=free_port(), num_replicas=2, max_ongoing_requests=16, max_queued_requests=8,
        max_request_body_bytes=64 * 1024,
    )
    deploy(settings, show_progress=False)
    yield settings
    serve.shutdown()


@pytest.fixture
def base(server):
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def client(base):
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture
def http(base):
    return httpx.AsyncClient(base_url=base, timeout=60)


def tokenizer():
    from fathom.engine.tokenizer import Tokenizer
    from fathom.worker.demo import demo_checkpoint_dir

    return Tokenizer.from_pretrained(demo_checkpoint_dir())


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


async def test_completions_prompt_forms_echo_stop(client):
    r = await client.completions.create(model=MODEL, prompt=["Hello", "World"], max_tokens=5, temperature=0)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    hello = tokenizer().encode("Hello")
    ids = await client.completions.create(model=MODEL, prompt=[hello], max_tokens=5, temperature=0)
    assert ids.choices[0].text == r.choices[0].text  # token ids = the same prompt as text
    echo = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text == "Hello" + r.choices[0].text
    full = r.choices[0].text
    stop_at = next(ch for ch in full[1:] if ch.strip() and ch != "\ufffd")
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


async def test_echo_with_logprobs_returns_the_prompt_tokens_then_the_completion(client):
    kw = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    plain = await client.completions.create(**kw)
    echo = await client.completions.create(**kw, echo=True)
    n_prompt = echo.usage.prompt_tokens
    lp, c = echo.choices[0].logprobs, plain.choices[0]
    assert echo.choices[0].text.endswith(c.text) and echo.usage == plain.usage
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == n_prompt + len(c.logprobs.tokens)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    assert all(v <= 0 for v in lp.token_logprobs[1:]) and all(len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.tokens[n_prompt:] == c.logprobs.tokens
    assert lp.token_logprobs[n_prompt:] == pytest.approx(c.logprobs.token_logprobs, abs=1e-4)
    assert lp.text_offset == sorted(lp.text_offset)
    # the last prompt token's logprobs are what decoding from the prompt without it reports
    ids = tokenizer().encode("The quick brown fox")
    shorter = await client.completions.create(model=MODEL, prompt=[ids[:-1]], max_tokens=1, temperature=0,
                                              logprobs=2, echo=False)
    assert lp.top_logprobs[n_prompt - 1] == pytest.approx(shorter.choices[0].logprobs.top_logprobs[0], abs=1e-4)
    stream = await client.completions.create(**kw, echo=True, stream=True)
    tokens, text = [], ""
    async for chunk in stream:
        for ch in chunk.choices:
            text += ch.text
            tokens += ch.logprobs.tokens if ch.logprobs else []
    assert text == echo.choices[0].text and tokens == lp.tokens


async def test_logit_bias_forces_and_bans_tokens_under_greedy(client):
    kw = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3, "temperature": 0, "logprobs": 0,
          "extra_body": {"return_tokens_as_token_ids": True, "ignore_eos": True}}
    greedy = await client.completions.create(**kw)
    first = int(greedy.choices[0].logprobs.tokens[0].removeprefix("token_id:"))
    forced_id = next(t for t in range(65, 91) if t != first)
    forced = await client.completions.create(**kw, logit_bias={str(forced_id): 100})
    assert forced.choices[0].logprobs.tokens == [f"token_id:{forced_id}"] * 3
    banned = await client.completions.create(**kw, logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.tokens[0] != f"token_id:{first}"
    chat = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=2, temperature=0, logit_bias={str(forced_id): 100},
                                                extra_body={"ignore_eos": True})
    assert chat.choices[0].message.content == chr(forced_id) * 2
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        await client.completions.create(model=MODEL, prompt="x", logit_bias={"1000000": 1})
    with pytest.raises(openai.UnprocessableEntityError, match="logit_bias"):
        await client.completions.create(model=MODEL, prompt="x", logit_bias={"5": 101})


async def test_tokenize_and_detokenize_as_vllm_serves_them(http, client):
    tok = tokenizer()
    r = await http.post("/tokenize", json={"model": MODEL, "prompt": "Hello world", "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"count": len(tok.encode("Hello world")), "max_model_len": MAX_LEN,
                    "tokens": tok.encode("Hello world"), "token_strs": [tok.id_to_token(t) for t in body["tokens"]]}
    back = await http.post("/detokenize", json={"model": MODEL, "tokens": body["tokens"]})
    assert back.json() == {"prompt": "Hello world"}
    plain = (await http.post("/tokenize", json={"prompt": "Hello world"})).json()  # model is optional (vLLM)
    assert plain["tokens"] == body["tokens"] and plain["token_strs"] is None
    # the chat form counts exactly what a chat completion is charged for
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    chat = (await http.post("/tokenize", json={"model": MODEL, "messages": messages})).json()
    done = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert chat["count"] == done.usage.prompt_tokens == len(chat["tokens"])
    cont = (await http.post("/tokenize", json={"messages": [*messages, {"role": "assistant", "content": "Sure"}],
                                               "add_generation_prompt": False, "continue_final_message": True})).json()
    assert tok.decode(cont["tokens"], skip_special_tokens=False).endswith("Sure")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with_tools = (await http.post("/tokenize", json={"messages": messages, "tools": tools})).json()
    assert with_tools["count"] > chat["count"]


@pytest.mark.parametrize("path, body, status, param", [
    ("/tokenize", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ("/tokenize", {"prompt": "x", "bogus": 1}, 422, "bogus"),
    ("/tokenize", {"prompt": 5}, 422, "prompt"),
    ("/tokenize", {"messages": []}, 422, "messages"),
    ("/tokenize", {"messages": [{"role": "root", "content": "a"}]}, 422, "messages[0].role"),
    ("/tokenize", {"messages": [{"role": "user", "content": "a"}], "continue_final_message": True,
                   "add_generation_prompt": False}, 422, None),
    ("/tokenize", {"prompt": "x" * 70_000}, 413, None),
    ("/detokenize", {"tokens": [10**6]}, 400, "tokens"),
    ("/detokenize", {"tokens": [-1]}, 422, "tokens[0]"),
    ("/detokenize", {"tokens": "abc"}, 422, "tokens"),
])
async def test_tokenize_errors_in_openai_format(http, path, body, status, param):
    r = await http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param


async def test_cached_tokens_reported_on_repeat(client):
    prompt = "A long shared system prompt that spans several KV blocks. " * 5  # >= 256 chars: affinity
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
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 600}]}).encode(), 400, "prompt"),
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
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        await client.completions.create(model=MODEL, prompt=[1] * 600, stream=True)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        await client.completions.create(model=MODEL, prompt=[10**6])
    unknown = await http.get("/v1/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].startswith("GET /v1/nothing")
    assert (await http.get("/v1/completions")).status_code == 405


async def test_reasoning_content_split_stream_and_non_stream(client):
    """The served model has reasoning_parser=deepseek_r1. The prompt opens `<think>` (prefix
    completion of an assistant turn), so output is reasoning until the model samples the
    `</think>` token; 8 seeded samples at high temperature include such splits. Each choice's
    reasoning + `</think>` + content must be the raw text the same samples give unparsed."""
    messages = [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": "<think>"}]
    kw = {"model": MODEL, "messages": messages, "max_tokens": 48, "temperature": 2.0, "seed": 1, "n": 8,
          "extra_body": {"add_generation_prompt": False, "continue_final_message": True}}
    whole = await client.chat.completions.create(**kw)
    tok = tokenizer()
    prompt = tok.apply_chat_template(messages, add_generation_prompt=False)
    prompt = prompt[: prompt.rfind("<think>") + len("<think>")]
    raw = await client.completions.create(
        model=MODEL, prompt=[tok.encode(prompt, add_special_tokens=False)], max_tokens=48, temperature=2.0,
        seed=1, n=8, extra_body={"skip_special_tokens": False},
    )
    split = 0
    for c, r in zip(whole.choices, raw.choices, strict=True):
        reasoning = c.message.model_extra.get("reasoning_content") or ""
        content = c.message.content or ""
        if "</think>" in r.text:
            split += 1
            head, tail = r.text.split("</think>", 1)
            assert (reasoning, content) == (head, tail.lstrip("\n"))
        else:
            assert (reasoning, content) == (r.text, "")
    assert split >= 1, "no sample closed its thinking; pick another seed"
    unclosed = sum(c.finish_reason == "length" and not c.message.content for c in whole.choices)
    thinking = whole.usage.completion_tokens_details.reasoning_tokens
    assert 48 * unclosed <= thinking < whole.usage.completion_tokens  # some samples answered after </think>

    stream = await client.chat.completions.create(**kw, stream=True)
    got = {i: ["", ""] for i in range(8)}
    async for chunk in stream:
        for c in chunk.choices:
            got[c.index][0] += (c.delta.model_extra or {}).get("reasoning_content") or ""
            got[c.index][1] += c.delta.content or ""
    want = {c.index: [c.message.model_extra.get("reasoning_content") or "", c.message.content or ""]
            for c in whole.choices}
    assert got == want


async def test_prefix_affinity_lands_repeats_on_the_cached_replica(client):
    """Two replicas: a repeat of a long prompt is only a prefix-cache hit if routed to the
    replica that served the first; affinity makes every repeat a hit."""
    prompts = [f"Conversation {i}: " + "the system prompt is long and shared. " * 8 for i in range(6)]
    for p in prompts:
        await client.completions.create(model=MODEL, prompt=p, max_tokens=1)
    for p in prompts:
        again = await client.completions.create(model=MODEL, prompt=p, max_tokens=1)
        assert again.usage.prompt_tokens_details.cached_tokens >= again.usage.prompt_tokens // 2


def _replica_stats(key: int) -> dict:
    handle = serve.get_deployment_handle("model", app_name="fathom")
    return handle.stats.remote(routing_key=key).result(timeout_s=30)


async def test_client_disconnect_aborts_the_engine_request(base):
    """Hang up after the first token of a 280-token stream: the replica's engine request must be
    aborted, so far fewer than 280 tokens get generated for it."""
    prompt = "Disconnect test: " + "a prompt long enough for a routing key. " * 7
    key = prefix_key(prompt)  # affinity sends the request and our stats probes to one replica
    before = (await asyncio.to_thread(_replica_stats, key))["generated_tokens"]
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 280, "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=base, timeout=60) as h, h.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # first token arrived: hang up
    for _ in range(200):
        stats = await asyncio.to_thread(_replica_stats, key)
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["active_streams"] == 0:
            break
        await asyncio.sleep(0.05)
    assert stats["num_running"] == 0 and stats["active_streams"] == 0
    assert 1 <= stats["generated_tokens"] - before < 280


async def _one_stream(base: str, i: int) -> tuple[int, int, str | None]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"client {i}"}], "max_tokens": 48,
            "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=base, timeout=120) as h, h.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            assert r.headers.get("content-type") == "application/json", (r.status_code, r.headers, r.text)
            assert r.json()["error"]["code"] in ("overloaded", "not_ready")
            return r.status_code, 0, r.headers.get("retry-after")
        chunks, done = 0, False
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks += 1
                assert "error" not in json.loads(line[6:])
        assert done
        return 200, chunks, None


async def test_load_64_concurrent_streams_complete_or_get_429(base, http):
    """Capacity is 2 replicas x 16 ongoing + 8 queued = 40: the rest must be refused cleanly,
    nothing may hang, and the server must be healthy afterwards."""
    results = await asyncio.wait_for(asyncio.gather(*(_one_stream(base, i) for i in range(64))), 240)
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert len(ok) + len(refused) == 64 and len(ok) >= 16
    assert all(status in (429, 503) and retry for status, _, retry in refused)
    assert refused, "64 > capacity 40: some requests must have been refused"
    assert (await http.get("/health/ready")).status_code == 200
    after = await _one_stream(base, 99)
    assert after[0] == 200
