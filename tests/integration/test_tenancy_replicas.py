"""Two ingress replicas, each its own process (a Ray actor running the ingress with uvicorn and
its model server), share limits and usage through the named tenancy actor; usage outlives a
replica. Real Ray, real HTTP, the official openai client."""

import asyncio
import os

import httpx
import openai
import pytest
import ray

from fathom.tenancy.actor import ACTOR_NAME, NAMESPACE
from support.tenancy_server import MODEL, wait_for, write_tenants

TENANTS = {
    "limited": {"keys": ["sk-limited"], "limits": {"requestsPerMinute": 4}},
    "single": {"keys": ["sk-single"], "limits": {"maxConcurrentRequests": 1}},
    "meter": {"keys": ["sk-meter"]},
    "root": {"keys": ["sk-root"], "role": "admin"},
}


@ray.remote(num_cpus=0)
class Replica:
    """One ingress replica in its own process: Frontend + uvicorn over an in-process model."""

    def __init__(self, tenants_file: str):
        import torch

        from fathom.serve.model_server import ModelServer
        from support.tenancy_server import HttpServer, app_for, settings

        torch.set_num_threads(1)
        s = settings(tenants_file, max_num_seqs=4)
        self.server = HttpServer(app_for(ModelServer(s), s, shared=True)).__enter__()

    def url(self) -> str:
        return self.server.url

    def pid(self) -> int:
        return os.getpid()


@pytest.fixture(scope="module")
def cluster(ray_local, tmp_path_factory):
    tenants_file = tmp_path_factory.mktemp("tenants") / "tenants.yaml"
    write_tenants(tenants_file, TENANTS)
    replicas = [Replica.remote(str(tenants_file)) for _ in range(2)]
    urls = ray.get([r.url.remote() for r in replicas])
    yield tenants_file, replicas, urls
    for r in replicas:
        ray.kill(r)
    ray.kill(ray.get_actor(ACTOR_NAME, namespace=NAMESPACE))


def client(url, key):
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


async def test_replicas_are_separate_processes(cluster):
    _, replicas, _ = cluster
    assert len(set(ray.get([r.pid.remote() for r in replicas]))) == 2


async def test_requests_per_minute_is_one_limit_across_replicas(cluster):
    _, _, urls = cluster
    ok = refused = 0
    for i in range(8):  # alternate replicas: per-replica buckets would let all 8 through
        try:
            await client(urls[i % 2], "sk-limited").completions.create(model=MODEL, prompt="x", max_tokens=1)
            ok += 1
        except openai.RateLimitError as e:
            refused += 1
            assert e.response.headers["x-ratelimit-limit-requests"] == "4"
    assert (ok, refused) == (4, 4)


async def test_concurrency_is_one_limit_across_replicas(cluster):
    _, _, urls = cluster
    long = asyncio.create_task(client(urls[0], "sk-single").completions.create(
        model=MODEL, prompt="long", max_tokens=200, extra_body={"ignore_eos": True}))
    tenancy = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    await wait_for(lambda: ray.get(tenancy.in_flight.remote("single")) == 1)  # admitted on replica 0
    with pytest.raises(openai.RateLimitError, match="concurrent"):
        await client(urls[1], "sk-single").completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert (await long).usage.completion_tokens == 200
    await client(urls[1], "sk-single").completions.create(model=MODEL, prompt="x", max_tokens=1)


async def test_usage_is_shared_and_survives_a_replica(cluster):
    tenants_file, replicas, urls = cluster
    usages = []
    for i in range(4):
        r = await client(urls[i % 2], "sk-meter").completions.create(model=MODEL, prompt=f"m{i}", max_tokens=3)
        usages.append(r.usage)
    ray.kill(replicas[0])  # replica 0 goes away (its settlements were already sent)
    fresh = Replica.remote(str(tenants_file))
    url = ray.get(fresh.url.remote())
    async with httpx.AsyncClient(base_url=url, headers={"authorization": "Bearer sk-root"}) as h:
        report = (await h.get("/v1/usage", params={"tenant": "meter"})).json()
    [row] = report["data"]
    assert row["requests"] == 4
    assert row["prompt_tokens"] == sum(u.prompt_tokens for u in usages)
    assert row["completion_tokens"] == sum(u.completion_tokens for u in usages)
