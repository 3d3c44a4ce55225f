"""One trace across every process of the real app: Ray Serve ingress, model replica and its
TP=2 rank workers, exported over OTLP/HTTP to a loopback receiver; and the app's /metrics."""

import asyncio
import os

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from fathom.api.serve import ServeSettings
from fathom.serve.launch import deploy, free_port
from support.otlp_receiver import span_tree

MODEL = "fathom-demo"


@pytest.fixture(scope="module")
def app(ray_local, receiver):
    settings = ServeSettings(
        engine={"max_model_len": 128, "max_num_seqs": 1, "tensor_parallel_size": 2},
        port=free_port(),
        max_ongoing_requests=1,
        max_queued_requests=1,
    )
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "fathom-it",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "FATHOM_METRICS_PUSH_INTERVAL_S": "0.5",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # what `fathom serve` sees; build_app forwards it to every deployment
    try:
        deploy(settings, show_progress=False)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    yield f"http://127.0.0.1:{settings.port}"
    serve.shutdown()


def test_streamed_chat_is_one_trace_across_ingress_replica_and_rank_workers(app, receiver):
    client_trace, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client = openai.OpenAI(base_url=f"{app}/v1", api_key="none", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        stream=True,
        extra_headers={"traceparent": f"00-{client_trace}-{client_span}-01"},
    )
    assert raw.headers["traceparent"].split("-")[1] == client_trace
    assert len(list(raw.parse())) >= 1

    def complete(spans):
        chat = [s for s in spans if s.trace_id == client_trace and s.name == f"chat {MODEL}"]
        linked = [
            s
            for s in spans
            if s.name == "fathom.forward" and chat and any(lk[1] == chat[0].span_id for lk in s.links)
        ]
        return (
            bool(chat)
            and {s.attributes["fathom.rank"] for s in linked} == {0, 1}
            and any(s.trace_id == client_trace and s.kind == "SERVER" for s in spans)
        )

    spans = receiver.wait_for_spans(complete, timeout=60)
    tree = span_tree(spans, client_trace)
    server = next(s for s in spans if s.trace_id == client_trace and s.kind == "SERVER")
    assert server.parent_span_id == client_span  # the client's traceparent is continued
    assert tree[server.name] == ["fathom.auth", "fathom.limits", "fathom.route"]
    assert tree["fathom.route"] == [f"chat {MODEL}"]
    assert tree[f"chat {MODEL}"] == ["fathom.decode", "fathom.detokenize", "fathom.prefill", "fathom.queue"]
    by_name = {s.name: s for s in spans if s.trace_id == client_trace}
    assert (
        server.resource["fathom.component"]
        == "ingress"
        == by_name["fathom.route"].resource["fathom.component"]
    )
    chat = by_name[f"chat {MODEL}"]
    assert chat.resource["fathom.component"] == "replica" and chat.attributes["fathom.replica"]
    assert chat.attributes["gen_ai.usage.output_tokens"] >= 1
    steps = [s for s in spans if s.name == "fathom.forward" and (client_trace, chat.span_id) in s.links]
    assert {s.resource["fathom.component"] for s in steps} == {"rank"}
    assert {s.attributes["fathom.world_size"] for s in steps} == {2}
    pids = {s.resource["process.pid"] for s in (server, chat, *steps)}
    assert len(pids) == 4  # ingress, replica, rank 0, rank 1
    assert {s.resource["service.name"] for s in (server, chat, *steps)} == {"fathom-it"}


async def test_queue_bound_429_is_traced_at_admission(app, receiver):
    client = openai.AsyncOpenAI(base_url=f"{app}/v1", api_key="none", max_retries=0, timeout=120)

    async def one(i):
        try:
            stream = await client.completions.create(
                model=MODEL, prompt=f"story {i}", max_tokens=48, temperature=0, stream=True
            )
            async for _ in stream:
                pass
            return None
        except openai.RateLimitError as e:
            return e.response.headers["traceparent"].split("-")[1]


    refused = [t for t in await asyncio.gather(*(one(i) for i in range(6))) if t]
    assert refused, "the bounded queue (1 running + 1 queued) should have refused some of 6 requests"
    trace_id = refused[0]
    spans = receiver.wait_for_spans(lambda s: sum(x.trace_id == trace_id for x in s) >= 2, timeout=30)
    mine = {s.name: s for s in spans if s.trace_id == trace_id}
    # shed at admission (Frontend.shed): after the key is checked, before limits, routing or a replica
    assert span_tree(spans, trace_id)["POST /v1/completions"] == ["fathom.auth"]
    assert mine["POST /v1/completions"].attributes["http.response.status_code"] == 429
    assert "fathom.route" not in mine and f"text_completion {MODEL}" not in mine


def test_metrics_endpoint_aggregates_the_app(app):
    text = httpx.get(f"{app}/metrics", timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    ok = [s for s in samples["fathom_requests_total"] if s.labels["status"] == "200"]
    assert ok and ok[0].labels["model"] == MODEL and ok[0].labels["tenant"] == "default"
    assert any(s.labels["status"] == "429" for s in samples["fathom_requests_total"])
    [total] = samples["fathom_kv_cache_blocks_total"]
    assert total.value > 0 and total.labels["replica"]  # per-replica gauges from the model replica
    assert samples["fathom_requests_running"][0].labels["replica"] == total.labels["replica"]
    assert next(s for s in samples["fathom_queue_time_seconds_count"]).value >= 1  # recorded in the replica
    assert next(s for s in samples["fathom_time_to_first_token_seconds_count"]).value >= 1
    assert next(s for s in samples["fathom_generation_tokens_total"]).value >= 4
    assert "fathom_prefix_cache_queried_tokens_total" in samples
