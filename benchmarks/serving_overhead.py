"""Serving overhead: the same streaming workload in-process through the engine, then through
HTTP + Ray Serve (proxy -> ingress -> model replica), side by side in one run.

    python benchmarks/serving_overhead.py [--concurrency 32] [--requests 96] [--max-tokens 128] [--spread 0.5]

Prints generated tokens/s of both paths, each round's ratio and their median (target:
serving >= 0.8 x in-process on the demo model at 32 concurrent requests). Each request
streams its length in tokens (ignore_eos; `max_tokens` on average, spread +-`spread` of it)
from a distinct prompt; `concurrency` requests are in flight at all times (closed loop). The
in-process path is `start_async_engine`, the very engine a model replica runs.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPLICA_THREADS = 1
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from fathom.api.serve import ServeSettings


def prompt(i: int) -> str:
    return f"Request {i}: tell me about the number {i * 7919 % 1000} in a few words."


def length(i: int, args) -> int:
    """Request i's completion length: `max_tokens` spread evenly over +-`spread` of it (a fixed
    pattern, the same for both paths). With spread 0 every request has the same length, so
    the 32 in flight finish in the same step and return as one wave."""
    u = (i * 37 % 97) / 96  # 0..1, scrambled
    return max(1, round(args.max_tokens * (1 - args.spread + 2 * args.spread * u)))


def expected_tokens(n: int, args) -> int:
    return sum(length(i, args) for i in range(n))


async def run_pool(n_requests: int, concurrency: int, one) -> tuple[int, float]:
    """Run `one(i) -> tokens` for i < n_requests with `concurrency` in flight; (tokens, seconds)."""
    queue = list(range(n_requests))
    total = 0

    async def worker():
        nonlocal total
        while queue:
            n = await one(queue.pop())
            total += n

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total, time.perf_counter() - t0


def in_process_round(engine, args, tag: str):
    from fathom.engine.sampling_params import SamplingParams

    async def one(i: int) -> int:
        n = 0
        params = SamplingParams(max_tokens=length(i, args), temperature=0.0, ignore_eos=True)
        async for out in engine.generate(f"{tag}-{i}", engine.tokenizer.encode(prompt(i)), params):
            for o in out.outputs:
                n += len(o.token_ids)
        return n

    return one


def http_round(session, settings: ServeSettings, args):
    """Stream over HTTP with aiohttp (as vLLM's benchmark_serving does): a light client, so that
    on a small machine the client takes as little CPU from the server as it can."""
    url = f"http://127.0.0.1:{settings.port}/v1/completions"

    async def one(i: int) -> int:
        body = {"model": settings.model_name, "prompt": prompt(i), "max_tokens": length(i, args),
                "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        tokens = 0
        async with session.post(url, json=body) as r:
            r.raise_for_status()
            async for line in r.content:
                if line.startswith(b"data: {") and b'"usage":{' in line:
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        tokens = usage["completion_tokens"]
        return tokens

    return one


async def side_by_side(settings: ServeSettings, args) -> tuple[list[float], list[float]]:
    """Alternate in-process and HTTP rounds (the machine's load drifts); tokens/s of each round."""
    import aiohttp
    import torch

    from fathom.worker.factory import start_async_engine

    torch.set_num_threads(REPLICA_THREADS)  # as in the replica: Ray sets OMP_NUM_THREADS=1 for num_cpus=0 actors
    engine = start_async_engine(settings.engine)
    local, served = [], []
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as client:
        for r in range(args.rounds + 1):  # round 0 warms both paths up
            for rates, one in ((local, in_process_round(engine, args, f"r{r}")),
                               (served, http_round(client, settings, args))):
                n = args.requests if r else args.concurrency
                tokens, seconds = await run_pool(n, args.concurrency, one)
                assert tokens == expected_tokens(n, args), (tokens, expected_tokens(n, args))
                if r:
                    rates.append(tokens / seconds)
            if r:
                print(f"round {r}: in-process {local[-1]:7.1f} tok/s, HTTP + Ray Serve {served[-1]:7.1f} tok/s")
    await engine.shutdown()
    return local, served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=128, help="mean completion length")
    ap.add_argument("--spread", type=float, default=0.5, help="completion lengths within +-spread of the mean")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of each path (after a warm-up)")
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the demo model)")
    ap.add_argument("--stream-chunks-per-s", type=float, default=None,
                    help="override ServeSettings.stream_chunks_per_s (chunk budget per replica)")
    args = ap.parse_args()
    from fathom.serve.launch import free_port

    settings = ServeSettings(engine={"model": args.model, "max_num_seqs": args.concurrency, "max_model_len": 512},
                             port=free_port(), max_ongoing_requests=max(64, args.concurrency))
    if args.stream_chunks_per_s:
        settings.stream_chunks_per_s = args.stream_chunks_per_s
    print(f"workload: {args.requests} streaming requests x {args.max_tokens} tokens (+-{args.spread:.0%}), "
          f"{args.concurrency} concurrent, "
          f"{os.cpu_count()} CPUs, stream_chunks_per_s={settings.stream_chunks_per_s:g}")
    from fathom.serve.launch import _shutdown, deploy, start_ray

    start_ray(settings)
    deploy(settings, show_progress=False)
    try:
        local, served = asyncio.run(side_by_side(settings, args))
    finally:
        _shutdown()
    a, b = statistics.median(local), statistics.median(served)
    ratios = [s / x for x, s in zip(local, served, strict=True)]  # each round's pair ran back to back
    print(f"in-process engine : {a:8.1f} tok/s (median of {len(local)})")
    print(f"HTTP + Ray Serve  : {b:8.1f} tok/s (median of {len(served)})")
    print(f"per-round ratios  : {' '.join(f'{r:.2f}' for r in ratios)}")
    print(f"ratio serving / in-process = {statistics.median(ratios):.2f} (median per-round ratio; target >= 0.8)")


if __name__ == "__main__":
    main()
