import time

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from fathom.telemetry import (
    attached,
    auth_span,
    extract,
    forward_step_span,
    get_tracer,
    inject,
    limits_span,
    reject,
    route_span,
    set_tenant,
    start_request_trace,
    traceparent,
)
from fathom.telemetry.propagation import span_context_of


def test_carrier_crosses_a_boundary_as_plain_data(by_name, spans):
    with get_tracer().start_as_current_span("caller") as caller:
        carrier = inject()
    assert set(carrier) == {"traceparent"} and carrier["traceparent"] == traceparent(caller)
    with attached(dict(carrier)), get_tracer().start_as_current_span("callee"):  # as if in another process
        pass
    callee, caller = (
        by_name(spans.get_finished_spans(), "callee"),
        by_name(spans.get_finished_spans(), "caller"),
    )
    assert callee.parent.span_id == caller.context.span_id
    assert callee.context.trace_id == caller.context.trace_id
    assert inject() == {} and span_context_of({}) is None and span_context_of(None) is None
    assert not extract(None)  # empty context: spans under it are roots


def test_ingress_children_and_rejections(by_name, spans):
    with get_tracer().start_as_current_span("server", kind=SpanKind.SERVER):
        with auth_span() as s:
            set_tenant(s, "acme")
        with limits_span("acme") as s:
            reject(s, 429, "tenant acme is over its 10 requests/minute", limit="rpm")
        with pytest.raises(RuntimeError), route_span("demo"):
            raise RuntimeError("no replica")
    finished = spans.get_finished_spans()
    server = by_name(finished, "server")
    auth, limits, route = (by_name(finished, n) for n in ("fathom.auth", "fathom.limits", "fathom.route"))
    assert {auth.parent.span_id, limits.parent.span_id, route.parent.span_id} == {server.context.span_id}
    assert auth.attributes["fathom.tenant"] == "acme" and auth.status.status_code == StatusCode.UNSET
    assert limits.status.status_code == StatusCode.ERROR and "10 requests/minute" in limits.status.description
    assert limits.attributes["error.type"] == "429" and limits.attributes["fathom.limit"] == "rpm"
    assert [e.name for e in limits.events] == ["rejected"]
    assert route.status.status_code == StatusCode.ERROR and route.events[0].name == "exception"
    assert route.attributes["gen_ai.request.model"] == "demo"


def _generate(rt, tokens=5, chunks=(6, 4)):
    t = time.time()
    for i, n in enumerate(chunks):
        rt.prefill_chunk(n, t=t + 0.01 * (i + 1))
    for i in range(tokens):
        rt.tokens(1, t=t + 0.1 + 0.01 * i)
        with rt.detokenize():
            pass


def test_request_trace_span_tree_and_genai_attributes(by_name, spans):
    with get_tracer().start_as_current_span("route") as route:
        carrier = inject()
    rt = start_request_trace(
        carrier,
        model="demo",
        request_id="chatcmpl-1",
        tenant="acme",
        replica="r0",
        max_tokens=16,
        temperature=0.7,
        prompt="secret prompt",
    )
    _generate(rt)
    rt.finish(["stop"], input_tokens=10, cached_tokens=4, completion="secret answer")
    rt.finish(["length"])  # idempotent
    finished = spans.get_finished_spans()
    chat = by_name(finished, "chat demo")
    assert chat.parent.span_id == route.context.span_id
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "demo"
    assert a["gen_ai.request.max_tokens"] == 16 and a["gen_ai.request.temperature"] == 0.7
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (10, 5)
    assert (a["fathom.tenant"], a["fathom.replica"], a["fathom.cached_tokens"]) == ("acme", "r0", 4)
    assert a["fathom.ttft"] == pytest.approx(rt.first_token_at - rt.arrival)
    assert "gen_ai.prompt" not in a and "gen_ai.completion" not in a  # content off by default
    children = {s.name: s for s in finished if s.parent and s.parent.span_id == chat.context.span_id}
    assert set(children) == {"fathom.queue", "fathom.prefill", "fathom.decode", "fathom.detokenize"}
    q, p, d = children["fathom.queue"], children["fathom.prefill"], children["fathom.decode"]
    assert chat.start_time == q.start_time <= q.end_time == p.start_time <= p.end_time == d.start_time
    assert d.end_time == chat.end_time
    assert [(e.name, e.attributes["num_tokens"]) for e in p.events] == [
        ("prefill_chunk", 6),
        ("prefill_chunk", 4),
    ]
    assert d.attributes["fathom.decode.tokens"] == 5
    assert rt.carrier["traceparent"] == traceparent(chat)


def test_prompt_and_completion_only_when_enabled(by_name, spans, monkeypatch):
    monkeypatch.setenv("FATHOM_TRACE_RECORD_CONTENT", "true")
    rt = start_request_trace(None, model="demo", prompt="hello")
    rt.finish(["stop"], completion="world")
    chat = by_name(spans.get_finished_spans(), "chat demo")
    assert chat.parent is None
    assert (chat.attributes["gen_ai.prompt"], chat.attributes["gen_ai.completion"]) == ("hello", "world")


def test_failed_request_closes_every_span_with_the_error(by_name, spans):
    rt = start_request_trace(None, model="demo", operation="text_completion")
    rt.prefill_chunk(8)
    rt.fail(RuntimeError("engine step failed: NaN logits"))
    finished = spans.get_finished_spans()
    req = by_name(finished, "text_completion demo")
    assert req.status.status_code == StatusCode.ERROR and "NaN logits" in req.status.description
    assert req.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in req.events] == ["exception"]
    assert {s.name for s in finished} == {"text_completion demo", "fathom.queue", "fathom.prefill"}
    unknown = start_request_trace(None, model="demo")
    unknown.fail("rank worker 1 died")  # no stamps at all: no made-up stages
    assert [s.name for s in spans.get_finished_spans()].count("fathom.queue") == 1


def test_aborted_in_queue_has_only_a_queue_span(by_name, spans):
    rt = start_request_trace(None, model="demo")
    rt.finish(["abort"])
    assert sorted(s.name for s in spans.get_finished_spans()) == ["chat demo", "fathom.queue"]


def test_forward_step_is_linked_not_parented(by_name, spans):
    a = start_request_trace(None, model="demo")
    b = start_request_trace(None, model="demo")
    with (
        get_tracer().start_as_current_span("unrelated current span"),
        forward_step_span([a.carrier, b.carrier, None], rank=1, world_size=2, num_tokens=12, step=7),
    ):
        pass
    step = by_name(spans.get_finished_spans(), "fathom.forward")
    assert step.parent is None
    linked = {(lk.context.trace_id, lk.context.span_id) for lk in step.links}
    expected = {(r.span.get_span_context().trace_id, r.span.get_span_context().span_id) for r in (a, b)}
    assert linked == expected
    assert step.attributes["fathom.rank"] == 1 and step.attributes["fathom.batch.num_seqs"] == 2
    assert step.attributes["fathom.batch.num_tokens"] == 12


def test_forward_step_of_unsampled_requests_is_not_recorded(by_name, spans):
    unsampled = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-00"}
    with forward_step_span([unsampled], rank=0, world_size=1) as s:
        assert not s.is_recording()
    with forward_step_span([], rank=0, world_size=1) as s:
        assert not s.is_recording()
    assert spans.get_finished_spans() == ()


def test_engine_stamps_become_the_children(spans, by_name):
    """observe_engine takes RequestMetrics (monotonic stamps) and places them on the wall clock."""
    from fathom.engine.outputs import RequestMetrics

    now = time.monotonic()
    m = RequestMetrics(arrival_time=now - 0.5, first_scheduled_time=now - 0.4, first_token_time=now - 0.2)
    m.prefill_chunks = [(now - 0.4, 16), (now - 0.3, 8)]
    m.detokenize_time = 0.01
    rt = start_request_trace(None, model="demo", arrival=time.time() - 0.5)
    rt.tokens(3)
    rt.observe_engine(m)
    rt.finish(["stop"], input_tokens=24)
    finished = spans.get_finished_spans()
    q, p, d, k = (
        by_name(finished, n) for n in ("fathom.queue", "fathom.prefill", "fathom.decode", "fathom.detokenize")
    )
    assert (q.end_time - q.start_time) / 1e9 == pytest.approx(0.1, abs=0.02)
    assert (p.end_time - p.start_time) / 1e9 == pytest.approx(0.2, abs=0.02)
    assert [e.attributes["num_tokens"] for e in p.events] == [16, 8]
    assert p.events[1].timestamp - p.events[0].timestamp == pytest.approx(0.1e9, rel=0.01)
    assert k.start_time == d.start_time and (k.end_time - k.start_time) / 1e9 == pytest.approx(0.01, abs=1e-6)
    assert by_name(finished, "chat demo").attributes["fathom.ttft"] == pytest.approx(0.3, abs=0.02)


def test_speculative_decoding_counts_are_attributes_of_the_request_span(spans, by_name):
    from fathom.engine.outputs import RequestMetrics

    m = RequestMetrics(arrival_time=time.monotonic(), spec_draft_tokens=8, spec_accepted_tokens=6)
    rt = start_request_trace(None, model="demo", arrival=time.time())
    rt.observe_engine(m)
    rt.finish(["stop"])
    a = by_name(spans.get_finished_spans(), "chat demo").attributes
    assert (a["fathom.spec_decode.draft_tokens"], a["fathom.spec_decode.accepted_tokens"]) == (8, 6)
    assert a["fathom.spec_decode.acceptance_rate"] == 0.75
