"""Multi-tenancy through real HTTP (uvicorn + the official openai client) over the real engine
on the demo model: 401/403/429 with OpenAI's error format and rate-limit headers, key rotation,
tenants file reload, per-request cap, usage and cost, cache isolation, Prometheus counters."""

import asyncio
import collections
import csv
import io
import json
import os
import time

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fathom.serve.model_server import ModelServer
from fathom.tenancy.keys import digest
from support.tenancy_server import MODEL, HttpServer, app_for, settings, wait_for, write_tenants

PRICING = {"promptPerMillion": 1000.0, "cachedPromptPerMillion": 250.0, "completionPerMillion": 4000.0}
TENANTS = {
    "alice": {"keys": ["sk-alice-1", "sk-alice-2"]},
    "bob": {"keys": ["sk-bob"]},
    "root": {"keys": ["sk-root"], "role": "admin"},
    "narrow": {"keys": ["sk-narrow"], "models": ["some-other-model"]},
    "limited": {"keys": ["sk-limited"], "limits": {"requestsPerMinute": 2}},
    "single": {"keys": ["sk-single"], "limits": {"maxConcurrentRequests": 1}},
    "thrifty": {"keys": ["sk-thrifty"], "limits": {"monthlyTokenBudget": 40}},
    "tpm": {"keys": ["sk-tpm"], "limits": {"tokensPerMinute": 100}},
    "capped": {"keys": ["sk-capped"], "limits": {"maxTokensPerRequest": 40}},
    "quitter": {"keys": ["sk-quitter"], "limits": {"tokensPerMinute": 100000}},
    "billed": {"keys": ["sk-billed"]},
    "counter": {"keys": ["sk-counter"], "limits": {"requestsPerMinute": 1}},
}
USER = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(1)
    tenants_file = tmp_path_factory.mktemp("tenants") / "tenants.yaml"
    write_tenants(tenants_file, TENANTS)
    s = settings(tenants_file, pricing=PRICING)
    s.metrics_key_file = str(tenants_file.parent / "metrics-key.sha256")  # absent until a test writes it
    ms = ModelServer(s)
    app = app_for(ms, s)
    with HttpServer(app) as srv:
        srv.tenants_file, srv.frontend = tenants_file, app.state.frontend
        yield srv
    ms.engine.stop_loop(10)


def client(server, key, **kw):
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, **kw)


def http(server, key=None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60)


def assert_openai_error(r: httpx.Response, status: int, code: str):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    return err


async def test_missing_and_unknown_keys_are_401_without_echoing_the_key(server):
    body = {"model": MODEL, "messages": USER, "max_tokens": 1}
    async with http(server) as h:
        assert_openai_error(await h.post("/v1/chat/completions", json=body), 401, "invalid_api_key")
    async with http(server, "sk-not-a-key-123") as h:
        r = await h.post("/v1/chat/completions", json=body)
        assert_openai_error(r, 401, "invalid_api_key")
        assert "sk-not-a-key-123" not in r.text
        assert (await h.get("/v1/usage")).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        await client(server, "sk-wrong").chat.completions.create(model=MODEL, messages=USER, max_tokens=1)


async def test_model_not_allowed_is_403_and_not_listed(server):
    with pytest.raises(openai.PermissionDeniedError, match="may not use model"):
        await client(server, "sk-narrow").chat.completions.create(model=MODEL, messages=USER, max_tokens=1)
    assert [m.id async for m in client(server, "sk-narrow").models.list()] == []
    assert [m.id async for m in client(server, "sk-bob").models.list()] == [MODEL]
    with pytest.raises(openai.AuthenticationError):
        await client(server, "sk-nobody").models.list()


async def test_tokenize_needs_a_key_and_an_allowed_model_and_is_not_metered(server):
    for path, body in [("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [104, 105]}),
                       ("/tokenize", {"messages": USER})]:
        async with http(server) as h:
            assert_openai_error(await h.post(path, json=body), 401, "invalid_api_key")
        async with http(server, "sk-narrow") as h:
            assert_openai_error(await h.post(path, json=body), 403, "model_not_allowed")
        async with http(server, "sk-counter") as h:
            for _ in range(3):  # requestsPerMinute 1: tokenizing runs no model and takes none of it
                assert (await h.post(path, json=body)).status_code == 200
    done = await client(server, "sk-counter").completions.create(model=MODEL, prompt="hi", max_tokens=1)
    async with http(server, "sk-counter") as h:
        [row] = (await h.get("/v1/usage")).json()["data"]
    assert row["requests"] == 1 and row["prompt_tokens"] == done.usage.prompt_tokens


async def test_both_keys_of_a_rotation_work_and_headers_come_with_success(server):
    for key in ("sk-alice-1", "sk-alice-2"):
        r = await client(server, key).completions.create(model=MODEL, prompt="rotate", max_tokens=2)
        assert r.usage.completion_tokens >= 1
    raw = await client(server, "sk-limited").chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=2)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_requests_per_minute_is_429_with_retry_after_and_headers(server):
    c = client(server, "sk-limited")
    statuses = []
    for _ in range(3):
        try:
            await c.completions.create(model=MODEL, prompt="x", max_tokens=1)
            statuses.append(200)
        except openai.RateLimitError as e:
            statuses.append(429)
            headers, body = e.response.headers, e.response.json()
    assert statuses[-1] == 429 and statuses.count(200) <= 2
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-limit-requests"] == "2"
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
    assert "requests per minute" in body["error"]["message"]


async def test_concurrency_limit_is_429_while_one_runs(server):
    c = client(server, "sk-single")
    first = asyncio.create_task(c.completions.create(model=MODEL, prompt="long", max_tokens=150,
                                                     extra_body={"ignore_eos": True}))
    gate = server.frontend.tenancy
    await wait_for(lambda: gate.client.state.in_flight("single") == 1)
    with pytest.raises(openai.RateLimitError, match="concurrent") as e:
        await c.completions.create(model=MODEL, prompt="second", max_tokens=1)
    assert e.value.response.headers["retry-after"] == "1"
    assert (await first).usage.completion_tokens == 150
    await wait_for(lambda: gate.client.state.in_flight("single") == 0)
    await c.completions.create(model=MODEL, prompt="third", max_tokens=1)  # the slot is free again


async def test_tokens_per_minute_counts_real_tokens(server):
    c = client(server, "sk-tpm")
    r = await c.completions.with_raw_response.create(model=MODEL, prompt="abc", max_tokens=20)
    assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 100 - 3 - 20  # prompt bytes + max_tokens reserved
    used = r.parse().usage.total_tokens
    r2 = await c.completions.with_raw_response.create(model=MODEL, prompt="abc", max_tokens=20)
    remaining = int(r2.headers["x-ratelimit-remaining-tokens"])
    assert remaining >= 100 - used - 3 - 20 - 5  # first settled to its real count (plus refill)
    with pytest.raises(openai.RateLimitError, match="tokens per minute") as e:
        await c.completions.create(model=MODEL, prompt="x" * 90, max_tokens=50)
    assert e.value.response.headers["x-ratelimit-limit-tokens"] == "100"


async def test_monthly_budget_is_429_insufficient_quota(server):
    c = client(server, "sk-thrifty")
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(10):
            await c.completions.create(model=MODEL, prompt="spend spend", max_tokens=10,
                                       extra_body={"ignore_eos": True})
    body = e.value.response.json()["error"]
    assert body["code"] == "insufficient_quota" and "Monthly token budget" in body["message"]
    assert int(e.value.response.headers["retry-after"]) > 0


async def test_max_tokens_per_request(server):
    c = client(server, "sk-capped")
    with pytest.raises(openai.BadRequestError, match="at most 40 tokens per request") as e:
        await c.completions.create(model=MODEL, prompt="hello", max_tokens=39)
    assert e.value.body["param"] == "max_tokens"
    r = await c.completions.create(model=MODEL, prompt="hello", max_tokens=None, extra_body={"ignore_eos": True})
    assert r.usage.total_tokens == 40  # an unset max_tokens is capped to what is left


async def test_usage_equals_sum_of_responses_and_users_see_only_their_own(server):
    c = client(server, "sk-bob")
    t0 = time.time()
    responses = [await c.completions.create(model=MODEL, prompt=f"usage {i} " * (i + 1), max_tokens=3 + i)
                 for i in range(3)]
    responses.append(await c.chat.completions.create(model=MODEL, messages=USER, max_tokens=4))
    stream = await c.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, stream=True,
                                             stream_options={"include_usage": True})
    streamed = [chunk.usage async for chunk in stream if chunk.usage]
    usages = [r.usage for r in responses] + streamed
    async with http(server, "sk-bob") as h:
        report = (await h.get("/v1/usage")).json()
        assert_openai_error(await h.get("/v1/usage", params={"tenant": "alice"}), 403, "permission_denied")
        assert_openai_error(await h.get("/v1/usage", params={"start_time": "yesterday"}), 400, None)
        later = (await h.get("/v1/usage", params={"start_time": time.time() + 3600})).json()
    [row] = report["data"]
    prompt = sum(u.prompt_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    assert (row["tenant"], row["model"], row["requests"]) == ("bob", MODEL, 5)
    assert (row["prompt_tokens"], row["cached_prompt_tokens"], row["completion_tokens"]) == (prompt, cached, completion)
    cost = ((prompt - cached) * PRICING["promptPerMillion"] + cached * PRICING["cachedPromptPerMillion"]
            + completion * PRICING["completionPerMillion"]) / 1e6
    assert row["cost"] == pytest.approx(cost) and report["total"]["cost"] == pytest.approx(cost)
    assert later["data"] == []
    async with http(server, "sk-root") as h:
        everyone = (await h.get("/v1/usage", params={"start_time": t0 - 120})).json()
        only_bob = (await h.get("/v1/usage", params={"tenant": "bob"})).json()
    assert {"bob", "alice"} <= {r["tenant"] for r in everyone["data"]}
    assert only_bob["data"] == report["data"]


async def test_hourly_export_adds_up_to_the_prometheus_counters(server):
    c = client(server, "sk-billed")
    for i in range(3):
        await c.completions.create(model=MODEL, prompt=f"bill me {i} " * (i + 2), max_tokens=2 + i)
    stream = await c.chat.completions.create(model=MODEL, messages=USER, max_tokens=3, stream=True)
    [_ async for _ in stream]
    async with http(server, "sk-root") as h:
        csv_text = (await h.get("/v1/usage", params={"format": "csv", "tenant": "billed"})).text
        jsonl = await h.get("/v1/usage", params={"format": "jsonl", "tenant": "billed"})
        assert_openai_error(await h.get("/v1/usage", params={"format": "xml"}), 400, None)
        metrics = (await h.get("/metrics")).text
    async with http(server, "sk-billed") as h:  # a user sees its own rows, nobody else's
        assert_openai_error(await h.get("/v1/usage", params={"format": "csv", "tenant": "bob"}), 403,
                            "permission_denied")
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [r["requests"] for r in csv.DictReader(io.StringIO(csv_text))] == [str(r["requests"]) for r in rows]
    assert {(r["tenant"], r["model"]) for r in rows} == {("billed", MODEL)}
    counters = collections.Counter()  # summed over the other labels (status)
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.labels.get("tenant") == "billed" and sample.name.endswith("_total"):
                counters[sample.name] += sample.value
    assert counters["fathom_prompt_tokens_total"] == sum(r["prompt_tokens"] for r in rows)
    assert counters["fathom_cached_prompt_tokens_total"] == sum(r["cached_prompt_tokens"] for r in rows)
    assert counters["fathom_generation_tokens_total"] == sum(r["completion_tokens"] for r in rows)
    assert counters["fathom_cost_total"] == pytest.approx(sum(r["cost"] for r in rows))
    assert counters["fathom_requests_total"] == sum(r["requests"] for r in rows) == 4


async def test_a_stream_abandoned_by_its_client_is_still_metered(server):
    gate = server.frontend.tenancy
    async with http(server, "sk-quitter") as h:
        body = {"model": MODEL, "prompt": "go on", "max_tokens": 60, "stream": True, "ignore_eos": True}
        async with h.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    break  # the client goes away after the first tokens
    await wait_for(lambda: gate.client.state.in_flight("quitter") == 0)
    await wait_for(lambda: gate.client.state.usage_rows(time.time(), "quitter") != [])
    [row] = gate.client.state.usage_rows(time.time(), "quitter")
    assert row["requests"] == 1 and 1 <= row["completion_tokens"] < 60


async def test_prefix_cache_is_isolated_between_tenants(server):
    prompt = "The quarterly report of a very secret project, page one, in full detail. " * 2
    a, b = client(server, "sk-alice-1"), client(server, "sk-bob")
    first = await a.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    again = await a.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    other = await b.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    assert first.usage.prompt_tokens >= 64
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert other.usage.prompt_tokens_details.cached_tokens == 0


async def test_prometheus_counters_by_tenant(server):
    await client(server, "sk-alice-2").completions.create(model=MODEL, prompt="metrics", max_tokens=2)
    async with http(server) as h:
        assert (await h.get("/nowhere")).status_code == 401  # no key: not even which routes exist
        ready = (await h.get("/health/ready")).json()
        assert set(ready) == {"status", "model", "max_model_len"}
        text = (await h.get("/metrics", headers={"Authorization": "Bearer sk-root"})).text
    assert 'fathom_requests_total{model="fathom-demo",status="200",tenant="alice"}' in text
    assert 'fathom_requests_total{model="fathom-demo",status="401",tenant="default"}' in text
    assert 'fathom_requests_total{model="fathom-demo",status="403",tenant="narrow"}' in text
    for name in ("prompt_tokens", "generation_tokens", "cost"):
        assert f'fathom_{name}_total{{model="fathom-demo",tenant="alice"}}' in text
    assert "sk-alice" not in text


async def test_metrics_need_an_admin_key_or_the_scrape_key(server):
    """/metrics lists every tenant's usage: no key 401, a user's key 403, an admin's key or the
    operator's scrape key (a digest in `metrics_key_file`, re-read when it changes) 200."""
    key_file = server.tenants_file.parent / "metrics-key.sha256"
    async with http(server) as h:
        no_key = await h.get("/metrics")
        user = await h.get("/metrics", headers={"Authorization": "Bearer sk-alice-1"})
        admin = await h.get("/metrics", headers={"Authorization": "Bearer sk-root"})
        before = await h.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
        key_file.write_text(f"{digest('scrape-key')}\n")
        await asyncio.sleep(1.1)  # KeyFile checks the file at most once a second
        scrape = await h.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
    assert_openai_error(no_key, 401, "invalid_api_key")
    assert_openai_error(user, 403, "permission_denied")
    assert_openai_error(before, 401, "invalid_api_key")
    assert admin.status_code == scrape.status_code == 200
    assert "fathom_requests_total" in scrape.text and "scrape-key" not in scrape.text
    assert "sk-alice" not in user.text


async def test_tenants_file_reload_without_restart(server):
    c_new = client(server, "sk-carol")
    with pytest.raises(openai.AuthenticationError):
        await c_new.completions.create(model=MODEL, prompt="x", max_tokens=1)
    write_tenants(server.tenants_file, {**TENANTS, "carol": {"keys": ["sk-carol"]},
                                        "bob": {"keys": ["sk-bob-rotated"]}})
    os.utime(server.tenants_file, (time.time(), time.time() + 5))
    await asyncio.sleep(1.1)  # the source checks the file at most once a second
    r = await c_new.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert r.usage.prompt_tokens >= 1
    await client(server, "sk-bob-rotated").completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):  # bob's old key was rotated out
        await client(server, "sk-bob").completions.create(model=MODEL, prompt="x", max_tokens=1)
    write_tenants(server.tenants_file, TENANTS)
    os.utime(server.tenants_file, (time.time(), time.time() + 10))


async def test_open_mode_needs_no_key_and_meters_as_default():
    s = settings(None)
    ms = ModelServer(s)
    try:
        with HttpServer(app_for(ms, s)) as srv:
            r = await client(srv, "anything").completions.create(model=MODEL, prompt="open", max_tokens=2)
            async with http(srv) as h:
                [row] = (await h.get("/v1/usage")).json()["data"]
        assert (row["tenant"], row["requests"], row["completion_tokens"]) == ("default", 1, r.usage.completion_tokens)
    finally:
        ms.engine.stop_loop(10)
