"""Serving overhead: the same streaming workload in-process through the engine, then through
HTTP + Ray Serve (proxy -> ingress -> model replica), side by side in one run.

    python benchmarks/serving_overhead.py [--concurrency 32] [--requests 96] [--max-tokens 64]

Prints generated tokens/s of both paths and their ratio (target: serving >= 0.8 x in-process
on the demo model at 32 concurrent requests). Each request streams `max_tokens` tokens
(ignore_eos) from a distinct prompt; `concurrency` requests are in flight at all times.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from fathom.api.serve import ServeSettings


def prompt(i: int) -> str:
    return f"Request {i}: tell me about the number {i * 7919 % 1000} in a few words."


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


async def in_process(settings: ServeSettings, args) -> tuple[int, float]:
    from fathom.engine.async_engine import AsyncEngine
    from fathom.engine.sampling_params import SamplingParams

    engine = AsyncEngine.from_settings(settings.engine)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)

    async def one(i: int) -> int:
        ids = engine.tokenizer.encode(prompt(i))
        n = 0
        async for out in engine.generate(f"r{i}", ids, params):
            for o in out.outputs:
                n += len(o.token_ids)
        return n

    await one(-1)  # warm-up
    result = await run_pool(args.requests, args.concurrency, one)
    await engine.shutdown()
    return result


async def over_http(settings: ServeSettings, args) -> tuple[int, float]:
    import httpx

    url = f"http://127.0.0.1:{settings.port}/v1/completions"
    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4)

    async def one(i: int, client: httpx.AsyncClient) -> int:
        body = {"model": settings.model_name, "prompt": prompt(i), "max_tokens": args.max_tokens,
                "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        tokens = 0
        async with client.stream("POST", url, json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        tokens = usage["completion_tokens"]
        return tokens

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await one(-1, client)  # warm-up
        return await run_pool(args.requests, args.concurrency, lambda i: one(i, client))


def serve_path(settings: ServeSettings, args) -> tuple[int, float]:
    from ray import serve

    from fathom.serve.launch import _shutdown, deploy, start_ray

    start_ray(settings)
    deploy(settings, show_progress=False)
    try:
        return asyncio.run(over_http(settings, args))
    finally:
        serve.shutdown()
        _shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the demo model)")
    args = ap.parse_args()
    from fathom.serve.launch import free_port

    settings = ServeSettings(engine={"model": args.model, "max_num_seqs": args.concurrency, "max_model_len": 512},
                             port=free_port(), max_ongoing_requests=max(64, args.concurrency))
    print(f"workload: {args.requests} streaming requests x {args.max_tokens} tokens, {args.concurrency} concurrent, "
          f"{os.cpu_count()} CPUs")
    tok_a, sec_a = asyncio.run(in_process(settings, args))
    print(f"in-process engine : {tok_a:6d} tokens in {sec_a:6.2f}s = {tok_a / sec_a:8.1f} tok/s")
    tok_b, sec_b = serve_path(settings, args)
    print(f"HTTP + Ray Serve  : {tok_b:6d} tokens in {sec_b:6.2f}s = {tok_b / sec_b:8.1f} tok/s")
    assert tok_a == tok_b == args.requests * args.max_tokens, (tok_a, tok_b)
    print(f"ratio serving / in-process = {(tok_b / sec_b) / (tok_a / sec_a):.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
