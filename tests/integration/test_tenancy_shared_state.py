"""Limit accounting and usage shared by several ingress processes through the named actor (real Ray)."""

import asyncio
import os
import time
import uuid

import pytest
import ray

from fathom.tenancy.actor import NAMESPACE, TenancyClient, tenancy_actor
from fathom.tenancy.state import Settlement
from fathom.tenancy.tenant_policy import Limits, TenantPolicy


@ray.remote(num_cpus=0)
class Ingress:
    """Stands in for an ingress replica: its own process, its own TenancyClient."""

    def __init__(self, actor_name: str):
        self.client = TenancyClient(tenancy_actor(name=actor_name))  # detached: outlives this replica

    async def admit(self, tenant: TenantPolicy, prompt: int, max_tokens: int):
        return await self.client.admit(tenant, prompt, max_tokens)

    async def serve(self, tenant: TenantPolicy, model: str, prompt: int, completion: int, n: int) -> int:
        """Admit and settle n requests, settlements batched per loop turn; returns how many ran."""
        ran = 0
        for _ in range(n):
            d = await self.client.admit(tenant, prompt, completion)
            if d.allowed:
                self.client.settle(Settlement(d.lease, tenant.name, model, prompt, 1, completion, 0.5))
                ran += 1
        return ran

    async def admit_then_go_away(self, tenant: TenantPolicy) -> bool:
        """Start an admission and cancel it while the actor answers; True if it was cancelled."""
        task = asyncio.ensure_future(self.client.admit(tenant, 1, 1))
        await asyncio.sleep(0)  # the admission is sent on this loop turn
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        return task.cancelled()  # the decision arrives for nobody and is released

    async def usage(self, tenant=None):
        return await self.client.usage(tenant)

    def pid(self) -> int:
        return os.getpid()


@pytest.fixture
def name(ray_local):
    name = f"tenancy-{uuid.uuid4().hex[:8]}"
    tenancy_actor(name=name, checkpoint_key=name)  # each test its own actor and checkpoint
    yield name
    ray.kill(ray.get_actor(name, namespace=NAMESPACE))


def test_request_limit_is_shared_by_two_ingress_processes(name):
    a, b = Ingress.remote(name), Ingress.remote(name)
    assert ray.get(a.pid.remote()) != ray.get(b.pid.remote())
    tenant = TenantPolicy("t", limits=Limits(requests_per_minute=10))
    ran = ray.get([a.serve.remote(tenant, "m", 3, 2, 8), b.serve.remote(tenant, "m", 3, 2, 8)])
    assert sum(ran) == 10  # not 16: one bucket for both replicas
    refused = ray.get(b.admit.remote(tenant, 3, 2))
    assert not refused.allowed and refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_concurrency_is_shared_and_released_by_either_replica(name):
    a, b = Ingress.remote(name), Ingress.remote(name)
    tenant = TenantPolicy("t", limits=Limits(max_concurrent_requests=2))
    assert ray.get(a.admit.remote(tenant, 1, 1)).allowed
    assert ray.get(b.admit.remote(tenant, 1, 1)).allowed
    third = ray.get(b.admit.remote(tenant, 1, 1))
    assert (third.allowed, third.reason) == (False, "concurrency")


def test_usage_survives_an_ingress_restart(name):
    a, b = Ingress.remote(name), Ingress.remote(name)
    tenant = TenantPolicy("t")
    assert ray.get([a.serve.remote(tenant, "m", 10, 4, 5), b.serve.remote(tenant, "m2", 7, 1, 2)]) == [5, 2]
    ray.get(a.usage.remote())  # flushes a's settlements
    ray.get(b.usage.remote())
    ray.kill(a)
    ray.kill(b)
    fresh = Ingress.remote(name)
    rows = {r["model"]: r for r in ray.get(fresh.usage.remote("t"))}
    assert rows["m"] == {"tenant": "t", "model": "m", "requests": 5, "prompt_tokens": 50,
                         "cached_prompt_tokens": 5, "completion_tokens": 20, "cost": 2.5, "total_tokens": 70}
    assert (rows["m2"]["requests"], rows["m2"]["completion_tokens"]) == (2, 2)
    assert ray.get(fresh.usage.remote("nobody")) == []


def test_token_reservations_settle_across_replicas(name):
    a, b = Ingress.remote(name), Ingress.remote(name)
    tenant = TenantPolicy("t", limits=Limits(tokens_per_minute=1000))
    first = ray.get(a.admit.remote(tenant, 100, 800))
    assert first.allowed and not ray.get(b.admit.remote(tenant, 100, 800)).allowed
    handle = ray.get_actor(name, namespace=NAMESPACE)
    ray.get(handle.settle.remote([Settlement(first.lease, "t", "m", 100, 0, 10)]))
    assert ray.get(b.admit.remote(tenant, 100, 700)).allowed


def test_admission_whose_caller_went_away_is_released(name):
    a = Ingress.remote(name)
    tenant = TenantPolicy("t", limits=Limits(max_concurrent_requests=1))
    assert ray.get(a.admit_then_go_away.remote(tenant))
    handle = ray.get_actor(name, namespace=NAMESPACE)
    deadline = time.monotonic() + 30
    while ray.get(handle.in_flight.remote("t")) != 0:
        assert time.monotonic() < deadline, "the abandoned admission was never released"
        time.sleep(0.05)
    assert ray.get(a.admit.remote(tenant, 1, 1)).allowed


def test_usage_survives_a_restart_of_the_tenancy_actor(ray_local):
    name = f"tenancy-{uuid.uuid4().hex[:8]}"
    handle = tenancy_actor(name=name, checkpoint_s=0.0, checkpoint_key=name)
    ray.get(handle.settle.remote([Settlement(None, "t", "m", 10, 2, 5, 0.25)]))
    ray.kill(handle, no_restart=False)  # a crash: Ray restarts it, from its checkpoint
    deadline = time.monotonic() + 60
    while True:
        try:
            rows = ray.get(ray.get_actor(name, namespace=NAMESPACE).usage.remote("t"), timeout=10)
            break
        except (ray.exceptions.RayActorError, ValueError):
            assert time.monotonic() < deadline, "the tenancy actor did not come back"
            time.sleep(0.2)
    assert [(r["requests"], r["prompt_tokens"], r["completion_tokens"], r["cost"]) for r in rows] == [(1, 10, 5, 0.25)]
    ray.kill(ray.get_actor(name, namespace=NAMESPACE))
