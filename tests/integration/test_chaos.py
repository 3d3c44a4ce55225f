"""Issue 12 chaos: what a user sees when parts of a deployment die or it is overloaded.

- A model replica's process is SIGKILLed under concurrent streams (2 replicas): only the streams
  it served fail, each with an explicit SSE error event (never an ending that looks complete),
  the others finish, and new requests succeed shortly after.
- A rank worker of a TP=2 instance is SIGKILLed mid-step: in-flight requests error within 5 s.
- 3× capacity: the excess is shed quickly with 429/503 + Retry-After; healthy afterwards. Runs
  ~20 s here (2 shared cores), not the 60 s a dedicated machine would use.
Figures are printed (`-s`)."""

import asyncio
import json
import os
import signal
import subprocess
import time

import httpx
import pytest
import ray
import torch

from fathom.engine.sampling_params import SamplingParams
from support.model_testing import save_reference
from support.serve_process import ServeProcess

pytestmark = pytest.mark.slow
MODEL = "fathom-demo"


def _replica_pids(root: int, marker: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if marker in line]


async def _stream(client: httpx.AsyncClient, i: int) -> dict:
    body = {"model": MODEL, "prompt": f"story {i}", "max_tokens": 200, "ignore_eos": True, "stream": True}
    events, t0 = [], time.monotonic()
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "events": [], "took": time.monotonic() - t0}
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return {"status": 200, "events": events, "took": time.monotonic() - t0}


def _outcome(res: dict) -> str:
    ev = res["events"]
    errors = [e for e in ev if e != "[DONE]" and "error" in json.loads(e)]
    if errors:
        return "error-event"
    finished = any(c.get("finish_reason") for e in ev if e != "[DONE]" for c in json.loads(e)["choices"])
    return "complete" if finished and ev and ev[-1] == "[DONE]" else "TRUNCATED"


def test_killing_one_of_two_replicas_fails_only_its_streams():
    server = ServeProcess("--num-replicas", "2", "--max-model-len", "512").wait_ready()
    try:
        pids = _replica_pids(server.proc.pid, "ServeReplica:fathom:model")
        assert len(pids) == 2, pids

        async def run() -> tuple[list[dict], float]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                tasks = [asyncio.create_task(_stream(client, i)) for i in range(8)]
                await asyncio.sleep(2.0)  # streams are under way on both replicas
                os.kill(pids[0], signal.SIGKILL)
                results = await asyncio.gather(*tasks)
                metrics = (await client.get("/metrics")).text
                t0 = time.monotonic()
                while True:  # how soon a new request succeeds
                    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
                    if r.status_code == 200:
                        return results, time.monotonic() - t0, metrics
                    assert r.status_code in (429, 503) and "retry-after" in r.headers, r.text
                    assert time.monotonic() - t0 < 60
                    await asyncio.sleep(0.5)

        results, recovered_s, metrics = asyncio.run(run())
        outcomes = [_outcome(r) for r in results]
        failed_counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                             if line.startswith("fathom_requests_total{") and 'status="200"' not in line)
        print(f"failed requests counted in fathom_requests_total: {failed_counted:g}")
        assert failed_counted >= outcomes.count("error-event")  # issue 12: failures do not vanish
        print(f"\nreplica kill: outcomes {outcomes}; a new request succeeded {recovered_s:.2f}s after the streams")
        assert "TRUNCATED" not in outcomes
        assert outcomes.count("error-event") >= 1 and outcomes.count("complete") >= 1
    finally:
        server.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("v3")
    return path, save_reference(path, "v3", seed=5)


async def test_killing_a_rank_worker_mid_step_errors_within_5s(ray_local, checkpoint):
    import fathom
    from fathom.engine.async_engine import AsyncEngine
    from fathom.engine.engine_core import ThreadCore
    from fathom.engine.errors import EngineDeadError

    offline = fathom.LLM(str(checkpoint[0]), tensor_parallel_size=2, dtype="float32", block_size=4,
                         max_num_batched_tokens=16, kv_cache_memory=1 << 20)
    engine = AsyncEngine(ThreadCore(offline.engine), offline.tokenizer)
    params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    streams = [engine.generate(f"r{i}", torch.randint(0, 256, (9,)).tolist(), params) for i in range(3)]
    for s in streams:
        await s.__anext__()
    pid = ray.get(offline.engine.executor.workers[1].ping.remote())
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()

    async def drain(s):
        with pytest.raises(EngineDeadError):
            async for _ in s:
                pass
        return time.monotonic() - t0

    async with asyncio.timeout(30):
        took = await asyncio.gather(*(drain(s) for s in streams))
    print(f"\nrank kill: in-flight requests errored after {max(took):.2f}s")
    assert max(took) < 5.0 and not engine.healthy
    await engine.shutdown()


def test_overload_at_three_times_capacity_sheds_quickly():
    # capacity: 1 replica x max_ongoing_requests 8 + 8 queued = 16; offer 48 at once, for ~20 s
    server = ServeProcess("--max-model-len", "256", "--max-num-seqs", "8", "--max-ongoing-requests", "8",
                          "--max-queued-requests", "8").wait_ready()
    try:
        async def run():
            stats = {"ok": 0, "shed": 0, "other": [], "shed_s": [], "no_retry_after": 0}
            async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                         limits=httpx.Limits(max_connections=100)) as client:
                async def one():
                    t0 = time.monotonic()
                    r = await client.post("/v1/completions",
                                          json={"model": MODEL, "prompt": "load", "max_tokens": 32, "ignore_eos": True})
                    if r.status_code == 200:
                        stats["ok"] += 1
                    elif r.status_code in (429, 503):
                        stats["shed"] += 1
                        stats["shed_s"].append(time.monotonic() - t0)
                        stats["no_retry_after"] += "retry-after" not in r.headers
                    else:
                        stats["other"].append(r.status_code)

                end = time.monotonic() + 20
                while time.monotonic() < end:
                    await asyncio.gather(*(one() for _ in range(48)))
                healthy = (await client.get("/health")).status_code
                canary = (await client.post("/v1/completions",
                                            json={"model": MODEL, "prompt": "x", "max_tokens": 1})).status_code
            return stats, healthy, canary

        stats, healthy, canary = asyncio.run(run())
        shed = sorted(stats["shed_s"])
        p95 = shed[int(len(shed) * 0.95) - 1] if shed else None
        p50 = shed[len(shed) // 2] if shed else None
        print(f"\noverload 3x for 20s: ok {stats['ok']}, shed {stats['shed']} (p50 {p50:.2f}s, p95 {p95:.2f}s), other "
              f"{stats['other']}; /health {healthy}, canary {canary}")
        assert not stats["other"] and stats["shed"] > 0 and stats["no_retry_after"] == 0
        assert p95 is not None and p95 < 5.0  # 2 cores shared with 4 builds (load ~9): a dedicated host sheds faster
        assert healthy == 200 and canary == 200
    finally:
        server.stop()
