"""ModelServer in-process (no Ray, no HTTP) over the real engine on the demo model: chunk
coalescing, error values, usage, reasoning."""

import json
import time

import pytest
import torch

from fathom.api.openai_error import APIError
from fathom.api.serve import ServeSettings
from fathom.serve.frontend import StreamEnd
from fathom.serve.model_server import ModelServer
from fathom.serve.protocol import ChatCompletionRequest, CompletionRequest


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    ms = ModelServer(ServeSettings(engine={"max_model_len": 256, "max_num_seqs": 4}, max_ongoing_requests=4))
    yield ms
    ms.engine.stop_loop(10)


def completion(**kw) -> CompletionRequest:
    return CompletionRequest(model="fathom-demo", prompt="Once upon a time", max_tokens=48, temperature=0,
                             ignore_eos=True, **kw)


async def collect(ms, req) -> tuple[list[dict], StreamEnd]:
    chunks, end = [], None
    async for item in ms.stream("completion", req):
        assert isinstance(item, str | StreamEnd), item
        if isinstance(item, StreamEnd):
            end = item
            continue
        for event in item.split("\n\n"):
            if event.startswith("data: {"):
                chunks.append(json.loads(event[6:]))
    return chunks, end


async def test_chunks_carry_several_tokens_when_the_chunk_budget_is_exceeded(server):
    default = server.settings.stream_chunks_per_s
    whole = await server.complete("completion", completion())
    text = whole.body["choices"][0]["text"]
    assert whole.first_token_at is not None  # TTFT and TPOT of non-streamed requests too
    server.settings.stream_chunks_per_s = 1e9  # no budget pressure: a chunk per step
    eager, end = await collect(server, completion())
    server.settings.stream_chunks_per_s = 4.0  # one stream may send a chunk every 0.25 s
    try:
        coalesced, _ = await collect(server, completion())
    finally:
        server.settings.stream_chunks_per_s = default
    for chunks in (eager, coalesced):
        assert "".join(c["choices"][0]["text"] for c in chunks) == text
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert end.completion_tokens == 48 and end.first_token_at is not None
    assert len(coalesced) < len(eager) // 2, (len(coalesced), len(eager))


async def test_the_end_of_a_stream_does_not_wait_out_the_coalescing_interval(server):
    """With a budget of 0.1 chunk/s a stream may send a chunk every 10 s; the request ends long
    before that, and its last tokens, usage and [DONE] must go out when it does."""
    default = server.settings.stream_chunks_per_s
    server.settings.stream_chunks_per_s = 0.1
    try:
        t0 = time.monotonic()
        chunks, end = await collect(server, completion())
        elapsed = time.monotonic() - t0
    finally:
        server.settings.stream_chunks_per_s = default
    assert end.completion_tokens == 48 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) == 2  # the first token at once, the other 47 together at the end
    assert elapsed < 5, f"the stream ended {elapsed:.1f}s after it started"


async def test_usage_chunk_and_done(server):
    items = [i async for i in server.stream("completion", completion(stream=True, stream_options={"include_usage": True}))]
    last_text = items[-2]
    assert last_text.endswith("data: [DONE]\n\n")
    usage_event = last_text.split("\n\n")[-3]
    usage = json.loads(usage_event[6:])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 48


async def test_errors_are_values_before_anything_starts(server):
    too_long = CompletionRequest(model="fathom-demo", prompt=[5] * 300)
    first = [i async for i in server.stream("completion", too_long)]
    assert len(first) == 1 and isinstance(first[0], APIError) and first[0].status == 400
    result = await server.complete("chat", ChatCompletionRequest(
        model="fathom-demo", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_schema", "json_schema": {
            "name": "bad", "schema": {"properties": {"a": {"$ref": "#/nowhere"}}}}}))
    assert isinstance(result, APIError) and result.param == "response_format"
    stats = await server.stats()
    assert stats["num_running"] == 0 and stats["active_streams"] == 0


async def test_the_built_in_demo_model_thinks_then_answers(server):
    assert server.reasoning_parser == "deepseek_r1"  # --reasoning-parser auto
    r = await server.complete("chat", ChatCompletionRequest(
        model="fathom-demo", messages=[{"role": "user", "content": "What is 47 + 38?"}], temperature=0))
    message = r.body["choices"][0]["message"]
    assert message["reasoning_content"].startswith("47+38: 7+8=15, carry 1;") and message["content"] == "47 + 38 = 85."


async def test_checkpoint_without_tokenizer_serves_token_ids_only(tmp_path):
    from support.model_testing import save_reference

    hf = save_reference(tmp_path, "v3", seed=2)
    ms = ModelServer(ServeSettings(engine={"model": str(tmp_path), "dtype": "float32", "max_num_seqs": 2,
                                           "block_size": 4, "kv_cache_memory": 1 << 20}, max_ongoing_requests=2))
    try:
        assert ms.reasoning_parser == "none"  # --reasoning-parser auto: only the built-in demo model thinks
        ids = [5, 17, 42, 7, 99]
        r = await ms.complete("completion", CompletionRequest(
            model=ms.model_name, prompt=ids, max_tokens=6, temperature=0, ignore_eos=True, logprobs=0))
        got = [int(t.removeprefix("token_id:")) for t in r.body["choices"][0]["logprobs"]["tokens"]]
        want = hf.generate(torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False)[0, 5:].tolist()
        assert got == want
        chat = await ms.complete("chat", ChatCompletionRequest(model=ms.model_name,
                                                               messages=[{"role": "user", "content": "x"}]))
        text = await ms.complete("completion", CompletionRequest(model=ms.model_name, prompt="x"))
        assert chat.status == text.status == 400 and chat.code == text.code == "no_tokenizer"
    finally:
        ms.engine.stop_loop(10)
