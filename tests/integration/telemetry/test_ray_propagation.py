"""Trace context across real Ray processes, exported over real OTLP/HTTP to a loopback receiver.

Actors stand in for the app's processes (ingress -> replica -> 2 rank workers), each calling
``configure_tracing`` at start with the env forwarded by ``with_tracing_env``; the serve
integration tests run the same checks through the real app.
"""

import pytest
import ray

from support.otlp_receiver import span_tree


@ray.remote(num_cpus=0)
class Rank:
    def __init__(self, rank: int):
        from fathom.telemetry import configure_tracing

        configure_tracing("rank")
        self.rank = rank

    def step(self, carriers: list[dict], num_tokens: int) -> int:
        from fathom.telemetry import flush_tracing, forward_step_span

        with forward_step_span(carriers, rank=self.rank, world_size=2, num_tokens=num_tokens):
            pass
        flush_tracing()
        return self.rank


@ray.remote(num_cpus=0)
class Replica:
    def __init__(self, ranks):
        from fathom.telemetry import configure_tracing

        configure_tracing("replica")
        self.ranks = ranks

    def generate(self, carrier: dict, model: str) -> str:
        from fathom.telemetry import flush_tracing, start_request_trace

        rt = start_request_trace(carrier, model=model, replica="replica-0", max_tokens=4)
        rt.prefill_chunk(3)
        ray.get([r.step.remote([rt.carrier], 3) for r in self.ranks])
        rt.tokens(4)
        ray.get([r.step.remote([rt.carrier], 1) for r in self.ranks])
        rt.finish(["length"], input_tokens=3)
        flush_tracing()
        return rt.carrier["traceparent"]


@ray.remote(num_cpus=0)
class Ingress:
    def __init__(self, replica):
        from fathom.telemetry import configure_tracing

        configure_tracing("ingress")
        self.replica = replica

    def handle(self, client_traceparent: str) -> str:
        from opentelemetry.trace import SpanKind

        from fathom.telemetry import attached, flush_tracing, get_tracer, inject, route_span

        with (
            attached({"traceparent": client_traceparent}),
            get_tracer().start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER),
            route_span("demo"),
        ):
            out = ray.get(self.replica.generate.remote(inject(), "demo"))
        flush_tracing()
        return out


@pytest.fixture(scope="module")
def app(tracing_env):
    ranks = [Rank.options(runtime_env=tracing_env).remote(r) for r in range(2)]
    replica = Replica.options(runtime_env=tracing_env).remote(ranks)
    ingress = Ingress.options(runtime_env=tracing_env).remote(replica)
    yield ingress
    for actor in (ingress, replica, *ranks):
        ray.kill(actor)


def test_one_trace_spans_ingress_replica_and_both_ranks(receiver, app):
    client_trace, client_span = "ab" * 16, "cd" * 8
    chat_tp = ray.get(app.handle.remote(f"00-{client_trace}-{client_span}-01"))
    chat_span_id = chat_tp.split("-")[2]
    spans = receiver.wait_for_spans(lambda s: sum(x.name == "fathom.forward" for x in s) >= 4)
    tree = span_tree(spans, client_trace)
    assert tree == {
        "POST /v1/chat/completions": ["fathom.route"],
        "fathom.route": ["chat demo"],
        "chat demo": ["fathom.decode", "fathom.prefill", "fathom.queue"],
        "": ["POST /v1/chat/completions"],
    }
    server = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert server.parent_span_id == client_span  # the client's traceparent is continued
    components = {s.name: s.resource["fathom.component"] for s in spans if s.trace_id == client_trace}
    assert components["fathom.route"] == "ingress" and components["chat demo"] == "replica"
    steps = [s for s in spans if s.name == "fathom.forward"]
    assert {s.attributes["fathom.rank"] for s in steps} == {0, 1}
    assert all(s.links == ((client_trace, chat_span_id),) and s.trace_id != client_trace for s in steps)
    assert all(
        s.resource["fathom.component"] == "rank" and s.resource["service.name"] == "fathom-it" for s in steps
    )
    assert len({s.resource["process.pid"] for s in spans}) == 4  # ingress, replica, two ranks
