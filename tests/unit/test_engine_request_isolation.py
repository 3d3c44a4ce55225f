"""Issue 12: an error caused by one request's data fails that request alone. The other
requests in the batch finish with the tokens they would have had anyway, the KV blocks of the
failed one are freed, and the instance keeps serving; only a dead executor is fatal."""

import asyncio

import pytest
import torch

from fathom.engine.async_engine import AsyncEngine
from fathom.engine.engine_core import ThreadCore
from fathom.engine.errors import InvalidRequestError, RequestFailedError
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.sampling_params import SamplingParams
from fathom.engine.step_input import SamplingSpec
from fathom.worker.sampler import Sampler
from support.engine_fakes import VOCAB, FakeExecutor, reference_greedy

GREEDY = SamplingParams(temperature=0, max_tokens=8)


def _sabotage(params: SamplingParams, **fields) -> SamplingParams:
    """A params object that passed validation and then went bad (a check that missed a case)."""
    for k, v in fields.items():
        object.__setattr__(params, k, v)
    return params


def test_a_row_that_cannot_be_sampled_fails_alone_in_the_sampler():
    s = Sampler("cpu")
    good = [SamplingSpec(i, SamplingParams(temperature=0.7, top_k=5), seed=i) for i in (0, 2)]
    bad = SamplingSpec(1, SamplingParams(temperature=0.7, min_tokens=3), seed=1, min_tokens_suppress=[10**6])
    for spec in (good[0], bad, good[1]):
        s.add(spec)
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    out = s.sample(logits, [0, 1, 2])
    assert set(out.errors) == {1} and "IndexError" in out.errors[1] and out.token_ids[1] == -1
    alone = Sampler("cpu")
    for spec in good:
        alone.add(spec)
    ref = alone.sample(logits[[0, 2]], [0, 2])
    assert [out.token_ids[0], out.token_ids[2]] == ref.token_ids


def test_huge_top_k_is_refused_by_params_and_by_the_engine():
    with pytest.raises(InvalidRequestError, match="top_k"):
        SamplingParams(top_k=9223372036854775808)
    engine = LLMEngine(EngineConfig(max_model_len=64, block_size=4), FakeExecutor(32, 4))
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        engine.add_request("a", [1, 2], SamplingParams(top_k=VOCAB + 1))
    with pytest.raises(InvalidRequestError, match="stop_token_ids"):
        engine.add_request("a", [1, 2], SamplingParams(stop_token_ids=[VOCAB]))
    assert not engine.requests


def _run(engine):
    done: dict[str, list[int]] = {}
    for _ in range(200):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            for c in out.outputs:
                done.setdefault(out.request_id, []).extend(c.token_ids)
    return done


def test_a_sampling_error_fails_one_request_and_the_batch_goes_on():
    engine = LLMEngine(EngineConfig(max_model_len=64, block_size=4), FakeExecutor(32, 4))
    prompts = {"a": [1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9]}
    engine.add_request("a", prompts["a"], GREEDY)
    engine.add_request("b", prompts["b"], _sabotage(SamplingParams(temperature=0, max_tokens=8, min_tokens=2)))
    engine.add_request("c", prompts["c"], GREEDY)
    _sabotage(engine.requests["b"].params, stop_token_ids=[10**6])  # the sampler's suppress list: IndexError
    done = _run(engine)
    failures = dict(engine.take_failures())
    assert set(failures) == {"b"} and isinstance(failures["b"], RequestFailedError)
    assert done["a"] == reference_greedy(prompts["a"], 8) and done["c"] == reference_greedy(prompts["c"], 8)
    assert engine.blocks.num_used == 0 and not engine.requests
    engine.add_request("d", [3, 3], GREEDY)  # the instance serves on, its KV cache consistent
    assert _run(engine)["d"] == reference_greedy([3, 3], 8)


def test_an_output_processing_error_fails_one_request(monkeypatch):
    engine = LLMEngine(EngineConfig(max_model_len=64, block_size=4), FakeExecutor(32, 4))
    real = engine.outputs.append

    def append(seq, *args):
        if seq.request.request_id == "bad" and seq.num_output_tokens == 2:
            raise UnicodeError("cannot detokenise")
        return real(seq, *args)

    monkeypatch.setattr(engine.outputs, "append", append)
    engine.add_request("bad", [1, 2, 3], SamplingParams(temperature=0, max_tokens=8, n=2))
    engine.add_request("ok", [4, 5], GREEDY)
    done = _run(engine)
    assert [r for r, _ in engine.take_failures()] == ["bad"]
    assert done["ok"] == reference_greedy([4, 5], 8) and engine.blocks.num_used == 0


async def test_the_loop_fails_the_stream_alone_and_stays_healthy():
    core = ThreadCore(LLMEngine(EngineConfig(max_model_len=128, block_size=4), FakeExecutor(64, 4)),
                      idle_wait_s=0.05)
    core.engine.executor.delay = 0.01
    sampler = core.engine.executor.sampler
    poisoned: set[int] = set()
    real = sampler._sample_batch

    def sample_batch(logits, seq_ids, allowed=None):
        if poisoned & set(seq_ids):
            raise RuntimeError("value cannot be converted to type int64 without overflow")
        return real(logits, seq_ids, allowed)

    sampler._sample_batch = sample_batch
    eng = AsyncEngine(core, None)
    try:
        async def consume(rid, prompt, params):
            return [t async for out in eng.generate(rid, prompt, params) for c in out.outputs for t in c.token_ids]

        good = asyncio.create_task(consume("good", [1, 2], SamplingParams(temperature=0, max_tokens=40)))
        bad = eng.generate("bad", [3, 4], SamplingParams(temperature=0, max_tokens=40))
        await bad.__anext__()
        poisoned.add(core.engine.requests["bad"].seqs[0].seq_id)
        with pytest.raises(RequestFailedError, match="overflow"):
            async for _ in bad:
                pass
        assert await good == reference_greedy([1, 2], 40)
        assert eng.healthy
        assert await consume("after", [5], GREEDY) == reference_greedy([5], 8)
    finally:
        await eng.shutdown()
