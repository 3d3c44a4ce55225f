"""Issue 12 R7/R8: past the model deployment's capacity (running replicas x max_ongoing_requests
+ max_queued_requests) the ingress refuses at once with 429 + Retry-After, before it reads the
request's body and before anything reaches Serve's router."""

import asyncio

import httpx

from fathom.api.serve import ServeSettings
from fathom.serve.frontend import Frontend
from fathom.serve.routes import build_api
from fathom.tenancy.admission import LocalTenancyClient
from fathom.tenancy.gate import TenancyGate
from fathom.tenancy.registry import TenantSource


class BlockedBackend:
    """A model deployment whose replicas are all busy until `release` is set."""

    def __init__(self):
        self.calls, self.release = 0, asyncio.Event()

    async def complete(self, kind, req, routing_key, **_):
        self.calls += 1
        await self.release.wait()
        return {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}}


async def test_the_request_past_capacity_is_refused_before_its_body_is_read():
    settings = ServeSettings(engine={"max_num_seqs": 1}, max_ongoing_requests=1, max_queued_requests=1)
    backend = BlockedBackend()
    frontend = Frontend(backend, settings,
                        tenancy=TenancyGate(TenantSource(None), LocalTenancyClient(), settings.model_name))
    frontend.model_replicas = 1  # capacity 1 x 1 + 1 = 2
    body = {"model": settings.model_name, "prompt": "hello", "max_tokens": 1}
    read = asyncio.Event()

    async def never_ending_body():
        read.set()  # the frontend started reading the body
        yield b'{"model": '
        await asyncio.Event().wait()

    transport = httpx.ASGITransport(app=build_api(frontend))
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as http:
        admitted = [asyncio.ensure_future(http.post("/v1/completions", json=body)) for _ in range(2)]
        while backend.calls < 2:
            await asyncio.sleep(0.01)
        refused = await asyncio.wait_for(http.post("/v1/completions", content=never_ending_body()), 5)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
        assert float(refused.headers["retry-after"]) >= 1
        assert not read.is_set() and backend.calls == 2
        backend.release.set()
        assert [r.status_code for r in await asyncio.gather(*admitted)] == [200, 200]
        assert (await http.post("/v1/completions", json=body)).status_code == 200  # capacity is back


async def test_nothing_is_shed_while_the_replicas_are_not_counted():
    settings = ServeSettings(engine={"max_num_seqs": 1}, max_ongoing_requests=1, max_queued_requests=1)
    frontend = Frontend(BlockedBackend(), settings,
                        tenancy=TenancyGate(TenantSource(None), LocalTenancyClient(), settings.model_name))
    assert frontend.model_replicas is None and frontend.capacity() is None
    frontend.inflight = 10**6
    frontend.shed()  # a model in this process: its own queue bounds it
