"""Noisy neighbour through real HTTP on the real engine: tenant A keeps 4x more requests waiting
than the engine runs at once while tenant B sends a steady stream. B's median time to
first token is measured alone and with A in the same run and compared as a ratio; then both
flood and the tokens streamed follow the weights. Figures are printed (-s)."""

import asyncio
import statistics
import time

import openai
import pytest
import torch

from fathom.serve.model_server import ModelServer
from support.tenancy_server import MODEL, HttpServer, app_for, settings, write_tenants

pytestmark = pytest.mark.slow

SLOTS = 2  # max_num_seqs: what the engine runs at once
FLOOD = SLOTS + 4 * SLOTS  # in flight: what the engine runs, plus 4x that waiting
WEIGHTS = {"a": 1.0, "b": 3.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(1)
    f = tmp_path_factory.mktemp("tenants") / "tenants.yaml"
    write_tenants(f, {t: {"keys": [f"sk-{t}"], "weight": w} for t, w in WEIGHTS.items()})
    s = settings(f, max_num_seqs=SLOTS)
    ms = ModelServer(s)
    with HttpServer(app_for(ms, s)) as srv:
        srv.model_server = ms
        yield srv
    ms.engine.stop_loop(10)


def client(server, tenant):
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=f"sk-{tenant}", max_retries=0, timeout=120)


def steady_prompt(i: int) -> str:
    """A distinct ~160-token prompt (no prefix-cache hits between B's requests)."""
    return f"[{i:04d}] summarise the following notes for the weekly report: " + "notes " * 22


async def ttft(c, i: int) -> float:
    t0 = time.perf_counter()
    stream = await c.completions.create(model=MODEL, prompt=steady_prompt(i), max_tokens=4,
                                        stream=True, extra_body={"ignore_eos": True})
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
    return first


async def steady(c, n: int, gap: float = 0.05) -> list[float]:
    out = []
    for i in range(n):
        out.append(await ttft(c, i))
        await asyncio.sleep(gap)
    return out


class Flood:
    """`depth` concurrent streaming request loops of a tenant; records when each token arrives
    (completions with logprobs=0 list the tokens of every chunk)."""

    def __init__(self, c, depth: int, max_tokens: int):
        self.c, self.depth, self.max_tokens = c, depth, max_tokens
        self.arrivals: list[float] = []  # one perf_counter() stamp per completion token
        self.tasks: list[asyncio.Task] = []
        self.errors: list[str] = []

    async def _loop(self, k: int) -> None:
        i = 0
        while True:
            try:
                stream = await self.c.completions.create(
                    model=MODEL, prompt=f"flood {k} {i}", max_tokens=self.max_tokens, logprobs=0, stream=True,
                    extra_body={"ignore_eos": True})
                async for chunk in stream:
                    now = time.perf_counter()
                    for c in chunk.choices:
                        self.arrivals += [now] * len(c.logprobs.tokens if c.logprobs else [])
            except openai.APIError as e:
                self.errors.append(repr(e))
                raise
            i += 1

    def start(self) -> "Flood":
        self.tasks = [asyncio.create_task(self._loop(k)) for k in range(self.depth)]
        return self

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def tokens(self, start: float, end: float) -> int:
        return sum(1 for t in self.arrivals if start <= t < end)


async def saturated(server, waiting: int) -> None:
    deadline = time.monotonic() + 60
    while server.model_server.engine.stats().num_waiting < waiting:
        assert time.monotonic() < deadline, "the flood never filled the queue"
        await asyncio.sleep(0.05)


async def idle(server) -> None:
    deadline = time.monotonic() + 60
    while (st := server.model_server.engine.stats()).num_running or st.num_waiting:
        assert time.monotonic() < deadline, "the engine never drained"
        await asyncio.sleep(0.05)


async def test_flood_does_not_slow_the_steady_tenant_and_tokens_follow_weights(server):
    a, b = client(server, "a"), client(server, "b")
    await steady(b, 3)  # warm-up
    # B alone and B beside A's flood, interleaved so that drifting machine load hits both alike.
    alone, crowded = [], []
    for _ in range(3):
        alone += await steady(b, 5)
        a_flood = Flood(a, FLOOD, max_tokens=48).start()
        await saturated(server, 4 * SLOTS - 1)
        crowded += await steady(b, 5)
        assert server.model_server.engine.stats().num_waiting >= 2 * SLOTS  # A still had a queue
        await a_flood.stop()
        await idle(server)

    a_flood, b_flood = Flood(a, FLOOD, max_tokens=16).start(), Flood(b, FLOOD, max_tokens=16).start()
    await saturated(server, 2 * FLOOD - SLOTS - 2)
    t0 = time.perf_counter()
    await asyncio.sleep(8)
    t1 = time.perf_counter()
    tokens = {"a": a_flood.tokens(t0, t1), "b": b_flood.tokens(t0, t1)}
    assert a_flood.errors == b_flood.errors == []
    await a_flood.stop()
    await b_flood.stop()

    ratio = statistics.median(crowded) / statistics.median(alone)
    share = tokens["b"] / max(1, tokens["a"])
    expected = WEIGHTS["b"] / WEIGHTS["a"]
    print(f"\nB median TTFT alone {statistics.median(alone) * 1e3:.0f} ms, with A flooding "
          f"{statistics.median(crowded) * 1e3:.0f} ms: ratio {ratio:.2f} (limit 2)")
    print(f"both flooding, weights b:a = {expected:.1f}: tokens streamed b {tokens['b']} a {tokens['a']}, "
          f"ratio {share:.2f} (limits {0.8 * expected:.1f}..{1.2 * expected:.1f})")
    assert ratio <= 2.0
    assert 0.8 * expected <= share <= 1.2 * expected
