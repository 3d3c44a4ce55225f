"""The ingress holds requests while no model replica runs: counted, bounded, 503 + Retry-After past the bound."""

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fathom.api.openai_error import APIError
from fathom.api.serve import ServeSettings
from fathom.serve.cold_start import ColdStart
from fathom.serve.frontend import Frontend
from fathom.serve.routes import build_api
from fathom.tenancy.admission import LocalTenancyClient
from fathom.tenancy.gate import TenancyGate
from fathom.tenancy.registry import TenantSource


class Replicas:
    """What the Serve controller would report: a count we set, and how often it was asked."""

    def __init__(self, running: int = 0):
        self.running, self.calls = running, 0

    async def __call__(self) -> int:
        self.calls += 1
        return self.running


def cold_start(replicas: Replicas, timeout_s: float, reports: list[int]) -> ColdStart:
    return ColdStart(replicas, timeout_s, reports.append, poll_s=0.05, up_ttl_s=0.5)


async def test_running_replicas_pass_at_once_and_are_trusted_for_a_while():
    replicas, reports = Replicas(running=2), []
    gate = cold_start(replicas, 1.0, reports)
    for _ in range(20):
        await gate.wait()
    assert replicas.calls == 1 and reports == []


async def test_requests_are_held_and_counted_until_a_replica_runs():
    replicas, reports = Replicas(), []
    gate = cold_start(replicas, 30.0, reports)
    waiters = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
    await asyncio.sleep(0.3)
    assert gate.held == 3 and reports[:3] == [1, 2, 3]
    assert replicas.calls <= 0.3 / 0.05 + 3  # one poll per interval, shared by the waiters
    replicas.running = 1
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert gate.held == 0 and reports[-1] == 0


async def test_past_the_bound_a_held_request_gets_503_with_retry_after():
    replicas, reports = Replicas(), []
    gate = cold_start(replicas, 0.2, reports)
    t0 = time.monotonic()
    with pytest.raises(APIError) as e:
        await gate.wait()
    assert 0.2 <= time.monotonic() - t0 < 2
    assert (e.value.status, e.value.code) == (503, "model_not_ready") and e.value.retry_after > 0
    assert reports == [1, 0]


class ZeroReplicaBackend:
    """A model deployment scaled to zero: it has no replica to answer anything."""

    async def running_replicas(self) -> int:
        return 0

    async def complete(self, *args, **kwargs):
        raise AssertionError("no request may reach a deployment without replicas")


async def test_over_http_the_held_request_is_exported_then_refused():
    settings = ServeSettings(cold_start_timeout_s=0.5)
    frontend = Frontend(ZeroReplicaBackend(), settings,
                        tenancy=TenancyGate(TenantSource(None), LocalTenancyClient(), settings.model_name))
    transport = httpx.ASGITransport(app=build_api(frontend))
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as http:
        body = {"model": settings.model_name, "prompt": "hello", "max_tokens": 1}
        request = asyncio.ensure_future(http.post("/v1/completions", json=body))
        await asyncio.sleep(0.2)
        held = waiting((await http.get("/metrics")).text)
        r = await request
        after = waiting((await http.get("/metrics")).text)
    assert held == {"ingress": 1.0} and after == {"ingress": 0.0}
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "model_not_ready"


def waiting(text: str) -> dict[str, float]:
    return {s.labels["replica"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "fathom_requests_waiting"}
