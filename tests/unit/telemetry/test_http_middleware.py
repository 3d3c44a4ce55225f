"""The ingress SERVER span over real HTTP (uvicorn on loopback, httpx client)."""

import asyncio
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from fathom.telemetry import FathomMetrics, TracingMiddleware, auth_span, get_tracer, route_span, set_tenant
from fathom.telemetry.http import fastapi_kwargs


async def _model(request):
    return JSONResponse({"id": request.path_params["model"]})


async def _stream(request):
    with auth_span() as s:
        set_tenant(s, "acme")

    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.01)
            with route_span("demo"):  # work done while streaming, inside the request
                yield f"data: {i}\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def _boom(request):
    raise RuntimeError("engine exploded")


async def _health(request):
    return JSONResponse({})


ROUTES = [
    ("/v1/models/{model}", _model, ["GET"]),
    ("/v1/chat/completions", _stream, ["POST"]),
    ("/boom", _boom, ["GET"]),
    ("/health", _health, ["GET"]),
]


def make_app(kind: str, metrics: FathomMetrics):
    """The same routes on FastAPI (native SERVER span, enriched) and plain Starlette (own span)."""
    if kind == "fastapi":
        app = FastAPI(**fastapi_kwargs())
        for path, endpoint, methods in ROUTES:
            app.add_route(path, endpoint, methods=methods)
        app.add_middleware(TracingMiddleware, metrics=metrics)
        return app
    return Starlette(
        routes=[Route(p, e, methods=m) for p, e, m in ROUTES],
        middleware=[Middleware(TracingMiddleware, metrics=metrics)],
    )


@pytest.fixture(scope="module", params=["fastapi", "starlette"])
def metrics(request):
    return FathomMetrics(), request.param


@pytest.fixture(scope="module")
def base_url(metrics):
    server = uvicorn.Server(
        uvicorn.Config(make_app(metrics[1], metrics[0]), host="127.0.0.1", port=0, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_server_span_continues_client_traceparent(base_url, spans, by_name, wait_spans):
    with get_tracer().start_as_current_span("client") as client:
        ctx = client.get_span_context()
        tp = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    r = httpx.get(f"{base_url}/v1/models/demo?x=1", headers={"traceparent": tp, "user-agent": "pytest"})
    assert r.status_code == 200
    server = by_name(wait_spans("GET /v1/models/{model}"), "GET /v1/models/{model}")
    assert server.kind == SpanKind.SERVER
    assert server.context.trace_id == ctx.trace_id and server.parent.span_id == ctx.span_id
    a = server.attributes
    assert (a["http.request.method"], a["url.path"], a["http.route"]) == (
        "GET",
        "/v1/models/demo",
        "/v1/models/{model}",
    )
    assert a["http.response.status_code"] == 200 and a["url.query"] == "x=1"
    assert a["server.address"] == "127.0.0.1" and a["user_agent.original"] == "pytest"
    assert server.status.status_code == StatusCode.UNSET
    # The response names the trace, so a user can quote it.
    assert r.headers["traceparent"] == f"00-{ctx.trace_id:032x}-{server.context.span_id:016x}-01"
    assert r.headers["x-request-id"] == f"{ctx.trace_id:032x}"


def test_streamed_response_is_timed_to_its_last_chunk(base_url, spans, wait_spans):
    with httpx.stream("POST", f"{base_url}/v1/chat/completions") as r:
        body = "".join(r.iter_text())
    assert body.count("data:") == 3
    done = wait_spans("POST /v1/chat/completions")
    server = next(s for s in done if s.name == "POST /v1/chat/completions")
    inner = [s for s in done if s.name == "fathom.route"]
    assert len(inner) == 3 and all(s.parent.span_id == server.context.span_id for s in inner)
    assert max(s.end_time for s in inner) <= server.end_time
    assert server.attributes["http.response.status_code"] == 200
    assert (
        server.attributes["fathom.tenant"] == "acme" and server.attributes["gen_ai.request.model"] == "demo"
    )
    assert [s.name for s in done].count("POST /v1/chat/completions") == 1  # never two SERVER spans


def test_requests_are_counted_by_model_tenant_and_status(base_url, metrics):
    registry = metrics[0].registry
    labels = {"model": "demo", "tenant": "acme", "status": "200"}
    before = registry.get_sample_value("fathom_requests_total", labels) or 0
    e2e_unknown = registry.get_sample_value("fathom_e2e_request_latency_seconds_count", {"model": "unknown"})
    with httpx.stream("POST", f"{base_url}/v1/chat/completions") as r:
        r.read()
    httpx.get(f"{base_url}/boom")
    assert registry.get_sample_value("fathom_requests_total", labels) == before + 1
    assert (
        registry.get_sample_value(
            "fathom_requests_total", {"model": "unknown", "tenant": "anonymous", "status": "500"}
        )
        >= 1
    )
    assert registry.get_sample_value("fathom_e2e_request_latency_seconds_count", {"model": "demo"}) >= 1
    # latency is kept for successes only: the 500 did not add to it
    assert (
        registry.get_sample_value("fathom_e2e_request_latency_seconds_count", {"model": "unknown"})
        == e2e_unknown
    )


def test_unhandled_error_is_a_5xx_error_span(base_url, spans, by_name, wait_spans):
    r = httpx.get(f"{base_url}/boom")
    assert r.status_code == 500
    server = by_name(wait_spans("GET /boom"), "GET /boom")
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["error.type"] == "RuntimeError"
    assert any(
        e.name == "exception" and "engine exploded" in e.attributes["exception.message"]
        for e in server.events
    )


def test_unmatched_route_keeps_a_low_cardinality_name(base_url, spans, by_name, wait_spans):
    assert httpx.get(f"{base_url}/no/such/path/123").status_code == 404
    server = by_name(wait_spans("GET"), "GET")
    assert server.attributes["http.response.status_code"] == 404 and "http.route" not in server.attributes
    assert server.status.status_code == StatusCode.UNSET  # 4xx is the client's error, not the server's


def test_health_is_not_traced(base_url, spans, wait_spans):
    r = httpx.get(f"{base_url}/health")
    assert r.status_code == 200 and "traceparent" not in r.headers
    assert spans.get_finished_spans() == ()


def test_a_given_request_id_is_recorded_not_replaced(base_url, spans, by_name, wait_spans):
    r = httpx.get(f"{base_url}/v1/models/demo", headers={"x-request-id": "req-42"})
    server = by_name(wait_spans("GET /v1/models/{model}"), "GET /v1/models/{model}")
    assert server.attributes["fathom.request_id"] == "req-42"
    assert "x-request-id" not in r.headers  # Ray Serve's proxy echoes it; we add no second one
    assert r.headers["traceparent"].split("-")[1] == f"{server.context.trace_id:032x}"
