"""Cost of tenancy on the ingress hot path, side by side in one run.

For N requests at a given concurrency, times: admission + settlement through the shared Ray
actor (what every ingress replica does), the same through an in-process state (the floor),
and a no-op Ray actor call (Ray's own round trip). Prints per-request microseconds and the
ratio to the no-op call.

    PYTHONPATH=platform python benchmarks/tenancy_admission.py [--requests 2000] [--concurrency 32]
"""

import argparse
import asyncio
import time

import ray

from fathom.serve.protocol import CompletionRequest
from fathom.tenancy.actor import TenancyClient, tenancy_actor
from fathom.tenancy.admission import LocalTenancyClient
from fathom.tenancy.gate import TenancyGate
from fathom.tenancy.registry import TenantSource
from fathom.tenancy.tenant_policy import Limits, TenantPolicy

TENANT = TenantPolicy("bench", limits=Limits(requests_per_minute=10**9, tokens_per_minute=10**12,
                                              max_concurrent_requests=10**6))
REQ = CompletionRequest(model="m", prompt="hello world", max_tokens=16)


@ray.remote(num_cpus=0)
class Noop:
    def ping(self, *args) -> None:
        return None


async def run(n: int, concurrency: int, one) -> float:
    """Seconds per request with `concurrency` requests in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def task():
        async with sem:
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(n)))
    return (time.perf_counter() - t0) / n


async def main(n: int, concurrency: int) -> None:
    shared = TenancyGate(TenantSource(None), TenancyClient(tenancy_actor(detached=False)), "m")
    local = TenancyGate(TenantSource(None), LocalTenancyClient(), "m")
    noop = Noop.remote()

    async def gate_request(gate):
        grant = await gate.admit(TENANT, "completion", REQ)
        gate.settle(grant, 3, 0, 16)

    async def noop_call():
        await noop.ping.remote()

    await run(200, concurrency, lambda: gate_request(shared))  # warm-up
    await run(200, concurrency, noop_call)
    rows = [("no-op Ray actor call", await run(n, concurrency, noop_call)),
            ("admit + settle, shared actor", await run(n, concurrency, lambda: gate_request(shared))),
            ("admit + settle, in-process", await run(n, concurrency, lambda: gate_request(local)))]
    base = rows[0][1]
    print(f"{n} requests, {concurrency} in flight")
    for name, s in rows:
        print(f"  {name:32s} {s * 1e6:8.1f} us/request   {s / base:5.2f}x the no-op call")
    usage = await shared.client.usage("bench")
    print(f"  usage rows settled through the actor: {usage[0]['requests']} requests")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        asyncio.run(main(a.requests, a.concurrency))
    finally:
        ray.shutdown()
