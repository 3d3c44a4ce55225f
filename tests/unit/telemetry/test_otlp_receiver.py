"""The OTLP/HTTP receiver harness, fed by real exporters in real child processes."""

import os
import subprocess
import sys

import httpx
import pytest

from support.otlp_receiver import OtlpReceiver, span_tree

CHILD = """
from fathom.engine.outputs import EngineStats
from fathom.telemetry import (FathomMetrics, configure_tracing, flush_tracing, forward_step_span,
                              get_tracer, inject, start_request_trace)
configure_tracing("replica")
with get_tracer().start_as_current_span("POST /v1/chat/completions"):
    carrier = inject()
rt = start_request_trace(carrier, model="demo", tenant="acme", max_tokens=8)
rt.prefill_chunk(5)
rt.tokens(3)
with forward_step_span([rt.carrier], rank=1, world_size=2):
    pass
rt.finish(["length"], input_tokens=5)
failed = start_request_trace(None, model="demo")
failed.fail(RuntimeError("step failed"))
flush_tracing()
m = FathomMetrics()
m.request_finished("demo", "acme", 200, e2e_seconds=0.5)
m.engine_stats("demo", "r0", EngineStats(2, 1, 5, 10, 0, 0, 0))
"""


def run_child(env: dict) -> None:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full.update(env, PYTHONPATH=os.pathsep.join(p for p in sys.path if p.endswith("platform")))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=full, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def receiver():
    with OtlpReceiver() as rx:
        yield rx


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_spans_from_another_process_arrive_decoded(receiver, compression):
    run_child(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "fathom-test",
            "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
        }
    )
    spans = receiver.wait_for_spans(lambda s: len(s) >= 7, timeout=20)
    by = {s.name: s for s in spans if s.name != "chat demo"}
    chat = next(s for s in spans if s.name == "chat demo" and s.status == "UNSET")
    root = by["POST /v1/chat/completions"]
    assert chat.parent_span_id == root.span_id and chat.trace_id == root.trace_id
    assert span_tree(spans, root.trace_id) == {
        "": ["POST /v1/chat/completions"],
        "POST /v1/chat/completions": ["chat demo"],
        "chat demo": ["fathom.decode", "fathom.prefill", "fathom.queue"],
    }
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert chat.attributes["gen_ai.usage.output_tokens"] == 3 and chat.attributes["fathom.tenant"] == "acme"
    assert by["fathom.prefill"].events == (("prefill_chunk", {"num_tokens": 5}),)
    assert (
        by["fathom.forward"].links == ((chat.trace_id, chat.span_id),)
        and not by["fathom.forward"].parent_span_id
    )
    assert chat.resource["service.name"] == "fathom-test" and chat.resource["fathom.component"] == "replica"
    failed = next(s for s in spans if s.name == "chat demo" and s.status == "ERROR")
    assert "step failed" in failed.status_message and failed.events[0][0] == "exception"


def test_otlp_metrics_carry_the_prometheus_names(receiver):
    run_child(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "otlp",
        }
    )
    points = receiver.wait_for_points(lambda p: any(x.metric == "fathom_requests_running" for x in p), 20)
    by = {p.metric: p for p in points}
    assert by["fathom_requests_total"].value == 1
    assert by["fathom_requests_total"].attributes == {"model": "demo", "tenant": "acme", "status": "200"}
    assert by["fathom_requests_running"].value == 2
    assert (by["fathom_e2e_request_latency_seconds"].count, by["fathom_e2e_request_latency_seconds"].sum) == (
        1,
        0.5,
    )


def test_receiver_refuses_what_it_cannot_decode(receiver):
    r = httpx.post(f"{receiver.endpoint}/v1/traces", json={"resourceSpans": []})
    assert r.status_code == 415 and "x-protobuf" in r.text
    r = httpx.post(
        f"{receiver.endpoint}/v1/profiles", content=b"", headers={"content-type": "application/x-protobuf"}
    )
    assert r.status_code == 404
    with pytest.raises(TimeoutError, match="received spans: \\[\\]"):
        receiver.wait_for_spans(lambda s: bool(s), timeout=0.2)
