"""The engine core in its own process (`start_async_engine`, W=1) on the demo model:
the same tokens as the engine on a thread, errors that cross the process boundary intact,
and no orphan or hang when either side dies."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fathom.api.engine import EngineSettings
from fathom.engine.errors import EngineDeadError, InvalidRequestError
from fathom.engine.sampling_params import SamplingParams
from fathom.worker.core_process import ProcessCore
from fathom.worker.factory import start_async_engine

SETTINGS = {"max_model_len": 256, "max_num_seqs": 8}


@pytest.fixture(scope="module")
def core():
    engine = start_async_engine(EngineSettings(**SETTINGS))
    yield engine
    engine.stop_loop(10)


async def tokens_of(engine, rid, prompt, params):
    ids = []
    async for out in engine.generate(rid, engine.tokenizer.encode(prompt), params):
        ids += out.outputs[0].token_ids
    return ids


async def test_same_tokens_as_the_engine_on_a_thread(core):
    assert isinstance(core._core, ProcessCore) and core._core.proc.pid != os.getpid()  # it runs elsewhere
    threaded = start_async_engine(EngineSettings(**SETTINGS, engine_core_process=False))
    try:
        prompts = [f"Prompt {i}: the quick brown fox" for i in range(5)]
        greedy = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
        seeded = SamplingParams(max_tokens=24, temperature=0.9, seed=7, ignore_eos=True)
        for params in (greedy, seeded):
            there = await asyncio.gather(*(tokens_of(core, f"p{i}{params.seed}", p, params)
                                           for i, p in enumerate(prompts)))
            here = await asyncio.gather(*(tokens_of(threaded, f"t{i}{params.seed}", p, params)
                                          for i, p in enumerate(prompts)))
            assert there == here and all(len(t) == 24 for t in there)
    finally:
        await threaded.shutdown()
    stats = core.stats()
    assert stats.healthy and stats.num_running == 0 and stats.kv_blocks_total > 0


async def test_admission_errors_cross_the_boundary_with_their_type(core):
    with pytest.raises(InvalidRequestError, match="empty"):
        async for _ in core.generate("empty", [], SamplingParams(max_tokens=4)):
            pass
    assert core.healthy  # one bad request harms nothing


async def test_a_consumer_that_leaves_aborts_its_request(core):
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    stream = core.generate("leaver", core.tokenizer.encode("hello"), params)
    await stream.__anext__()
    await stream.aclose()
    for _ in range(100):  # the abort travels to the child; its stats come back with the next step
        if core.stats().num_running == 0:
            break
        await asyncio.sleep(0.05)
    assert core.stats().num_running == 0


def test_startup_errors_are_raised_in_the_caller(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        start_async_engine(EngineSettings(model=str(tmp_path)))


async def test_a_killed_core_fails_in_flight_and_later_requests():
    engine = start_async_engine(EngineSettings(**SETTINGS))
    params = SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
    stream = engine.generate("victim", engine.tokenizer.encode("hello"), params)
    await stream.__anext__()
    os.kill(engine._core.proc.pid, signal.SIGKILL)
    with pytest.raises(EngineDeadError, match="killed by signal 9"):
        async for _ in stream:
            pass
    assert not engine.healthy and not engine.stats().healthy
    with pytest.raises(EngineDeadError):
        engine.check_health()
    with pytest.raises(EngineDeadError):
        async for _ in engine.generate("later", [1, 2, 3], params):
            pass
    engine.stop_loop(5)


async def test_stop_ends_in_flight_streams_and_the_child():
    engine = start_async_engine(EngineSettings(**SETTINGS))
    params = SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
    stream = engine.generate("inflight", engine.tokenizer.encode("hello"), params)
    await stream.__anext__()
    await engine.shutdown()
    with pytest.raises(EngineDeadError, match="shut down"):
        async for _ in stream:
            pass
    assert engine._core.proc.returncode == 0


def test_the_core_exits_when_its_parent_is_killed(tmp_path):
    """A replica killed with SIGKILL (OOM killer, node drain) must not leave its engine core,
    and the model's memory, behind."""
    script = textwrap.dedent(f"""
        import sys, time
        from fathom.api.engine import EngineSettings
        from fathom.worker.factory import start_async_engine
        engine = start_async_engine(EngineSettings(**{SETTINGS!r}))
        print(engine._core.proc.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = None
    try:
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while _alive(child):
            assert time.monotonic() < deadline, f"engine core {child} outlived its parent"
            time.sleep(0.1)
    finally:
        parent.kill()
        if child is not None and _alive(child):  # do not leave it running if the test failed
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
