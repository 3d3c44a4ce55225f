import asyncio

import pytest

from fathom.engine.async_engine import AsyncEngine
from fathom.engine.engine_core import ThreadCore
from fathom.engine.errors import EngineDeadError, InvalidRequestError, PromptTooLongError
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.sampling_params import SamplingParams
from support.engine_fakes import FakeExecutor, reference_greedy


@pytest.fixture
async def engine():
    core = ThreadCore(LLMEngine(EngineConfig(max_model_len=128, block_size=4), FakeExecutor(64, 4)),
                      idle_wait_s=0.05)
    eng = AsyncEngine(core, None)
    eng.executor = core.engine.executor
    yield eng
    await eng.shutdown()


async def collect(engine, rid, prompt, params, **kw):
    outs = []
    async for out in engine.generate(rid, prompt, params, **kw):
        outs.append(out)
    return outs


async def test_concurrent_streams_deliver_deltas_and_usage(engine):
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=2)
    prompts = {f"r{i}": [i + 1] * (3 + i) for i in range(4)}
    results = await asyncio.gather(*[collect(engine, k, v, params) for k, v in prompts.items()])
    for (k, v), outs in zip(prompts.items(), results):
        tokens = [t for o in outs for c in o.outputs for t in c.token_ids]
        assert tokens == reference_greedy(v, 8)
        assert all(len(c.logprobs) == len(c.token_ids) for o in outs for c in o.outputs)
        assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
        assert not any(o.finished for o in outs[:-1])
        assert outs[-1].usage.prompt_tokens == len(v) and outs[-1].usage.completion_tokens == 8
    stats = engine.stats()
    assert stats.healthy and stats.num_running == 0 and stats.kv_blocks_used == 0


async def test_admission_errors_raise_when_iterating(engine):
    with pytest.raises(PromptTooLongError):
        await collect(engine, "long", [1] * 200, SamplingParams())
    with pytest.raises(InvalidRequestError, match="empty"):
        await collect(engine, "empty", [], SamplingParams())


async def test_abort_and_cancellation_free_blocks(engine):
    params = SamplingParams(temperature=0, max_tokens=100)
    gen = engine.generate("a", [5] * 10, params)
    first = await gen.__anext__()
    assert not first.finished
    engine.abort("a")
    rest = [o async for o in gen]
    assert rest[-1].finished and rest[-1].outputs[0].finish_reason == "abort"

    started = asyncio.Event()

    async def consume():
        async for _ in engine.generate("b", [6] * 10, params):
            started.set()

    engine.executor.delay = 0.05  # ~5 s of generation left when we cancel
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        await asyncio.sleep(0.01)
        if engine.stats().kv_blocks_used == 0 and engine.stats().num_running == 0:
            break
    assert engine.stats().kv_blocks_used == 0


async def test_dead_executor_fails_in_flight_requests(engine):
    gen = engine.generate("a", [5] * 10, SamplingParams(temperature=0, max_tokens=1000))
    await gen.__anext__()
    engine.executor.dead = True
    with pytest.raises(EngineDeadError):
        async for _ in gen:
            pass
    assert not engine.healthy and not engine.stats().healthy
    with pytest.raises(EngineDeadError):
        await collect(engine, "b", [1, 2], SamplingParams())
