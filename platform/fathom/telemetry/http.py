"""The ingress's HTTP layer of telemetry, as pure ASGI middleware (``app.add_middleware(TracingMiddleware)``).

Per HTTP request it provides:

- the SERVER span: FastAPI >= 0.135 opens one natively (HTTP semantic conventions, named
  ``{method} {route}``, client ``traceparent`` continued, open until the last body chunk); the
  middleware then enriches that span instead of nesting a second one. Under an app without
  native telemetry (plain Starlette, older FastAPI) it opens the same span itself;
- the trace id in the response: ``traceparent`` and, unless the app or Ray Serve set one,
  ``x-request-id`` (the trace id), so users can quote it. Behind Ray Serve the proxy sets
  ``x-request-id`` itself (the client's, or a fresh id) on request and response: that id is
  then recorded on the SERVER span as ``fathom.request_id``, so either value finds the trace;
- optionally (``metrics=FathomMetrics``, for apps that do not count requests themselves; the
  Fathom ingress counts in its frontend, which knows about in-stream failures) the request's
  ``fathom_requests_total`` by model/tenant/status and, for successes,
  ``fathom_e2e_request_latency_seconds``, once the last byte is sent. Model and tenant come
  from ``note_request(model=..., tenant=...)`` (``route_span``/``set_tenant`` call it), which
  also puts them on the SERVER span.

Per the HTTP semantic conventions 5xx responses set ERROR status and ``error.type``; 4xx do
not (the child span that refused the request, e.g. ``fathom.auth``, carries the error).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from fathom.telemetry import attributes as A
from fathom.telemetry.metrics import FathomMetrics
from fathom.telemetry.propagation import extract, trace_id_hex, traceparent
from fathom.telemetry.tracing import get_tracer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

DEFAULT_EXCLUDED_PATHS = frozenset({"/health", "/metrics", "/-/healthz", "/-/routes"})
UNKNOWN_MODEL, ANONYMOUS = "unknown", "anonymous"


@dataclass
class RequestRecord:
    """What the handler learns about one HTTP request, for its metrics and server span."""

    server_span: trace.Span
    model: str = UNKNOWN_MODEL
    tenant: str = ANONYMOUS


_record: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "fathom_http_request", default=None
)


def note_request(*, model: str | None = None, tenant: str | None = None) -> None:
    """Tell the current HTTP request's telemetry its model and/or tenant (no-op outside one)."""
    record = _record.get()
    if record is None:
        return
    if model:
        record.model = model
        record.server_span.set_attribute(A.GEN_AI_REQUEST_MODEL, model)
    if tenant:
        record.tenant = tenant
        record.server_span.set_attribute(A.FATHOM_TENANT, tenant)


def is_excluded(scope: Scope) -> bool:
    """Probes and scrapes are not traced (``/health``, ``/metrics``, Serve's ``/-/...``)."""
    return scope.get("path") in DEFAULT_EXCLUDED_PATHS


def fastapi_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``FastAPI(...)`` of the ingress: FastAPI's native telemetry (when
    this FastAPI has it) without probe/scrape spans and without per-dependency spans (three
    spans per request that tell an operator nothing about inference, at a measurable cost)."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"exclude": is_excluded, "operation_spans": False}}


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def server_attributes(scope: Scope, headers: dict[str, str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        A.HTTP_REQUEST_METHOD: scope.get("method", "GET"),
        A.URL_PATH: scope.get("path", ""),
        A.URL_SCHEME: scope.get("scheme", "http"),
        A.NETWORK_PROTOCOL_VERSION: scope.get("http_version", "1.1"),
    }
    if scope.get("query_string"):
        attrs[A.URL_QUERY] = scope["query_string"].decode("latin-1")
    if scope.get("server"):
        attrs[A.SERVER_ADDRESS], attrs[A.SERVER_PORT] = scope["server"][0], scope["server"][1]
    if "host" in headers:
        attrs[A.SERVER_ADDRESS] = headers["host"].rsplit(":", 1)[0]
    if scope.get("client"):
        attrs[A.CLIENT_ADDRESS] = scope["client"][0]
    if "user-agent" in headers:
        attrs[A.USER_AGENT] = headers["user-agent"]
    return attrs


def _native_server_span() -> trace.Span | None:
    """The SERVER span the framework already opened for this request, if any."""
    current = trace.get_current_span()
    return current if current.is_recording() and getattr(current, "kind", None) == SpanKind.SERVER else None


class TracingMiddleware:
    """ASGI middleware for the ingress's HTTP telemetry (see module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        excluded_paths: frozenset[str] = DEFAULT_EXCLUDED_PATHS,
        metrics: FathomMetrics | None = None,
    ) -> None:
        self.app = app
        self.excluded_paths = excluded_paths
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.excluded_paths:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        native = _native_server_span()
        method = scope.get("method", "GET")
        attrs = server_attributes(scope, headers)
        if native is not None:  # add what the framework's span leaves out
            native.set_attributes({k: attrs[k] for k in (A.USER_AGENT, A.CLIENT_ADDRESS) if k in attrs})
        s = native or get_tracer().start_span(
            method, extract(headers), kind=SpanKind.SERVER, attributes=attrs
        )
        if "x-request-id" in headers:
            s.set_attribute(A.FATHOM_REQUEST_ID, headers["x-request-id"])
        record, started = RequestRecord(s), time.perf_counter()
        state: dict[str, Any] = {"done": False, "status": None}

        def done(error: BaseException | None = None) -> None:
            if state["done"]:
                return
            state["done"] = True
            if self.metrics is not None:
                status = state["status"] or 500
                self.metrics.request_finished(
                    record.model, record.tenant, status, time.perf_counter() - started
                )
            if error is not None:
                _record_error(s, error)
            if native is None:
                _finish_own_span(s, scope, method)

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
                _on_response_start(s, message, own=native is None, request_id="x-request-id" in headers)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done()

        token = _record.set(record)
        try:
            with trace.use_span(s, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                await self.app(scope, receive, send_traced)
        except BaseException as exc:
            done(exc)
            raise
        finally:
            done()
            _record.reset(token)


def _on_response_start(s: trace.Span, message: Message, own: bool, request_id: bool) -> None:
    status = int(message["status"])
    if own:
        s.set_attribute(A.HTTP_RESPONSE_STATUS_CODE, status)
        if status >= 500:
            s.set_status(Status(StatusCode.ERROR))
            s.set_attribute(A.ERROR_TYPE, str(status))
    headers = list(message.get("headers", []))
    names = {k.lower() for k, _ in headers}
    tp = traceparent(s)
    if tp is not None:
        if b"traceparent" not in names:
            headers.append((b"traceparent", tp.encode()))
        if b"x-request-id" not in names and not request_id:  # else the proxy answers with that id
            headers.append((b"x-request-id", trace_id_hex(s).encode()))
    message["headers"] = headers


def _record_error(s: trace.Span, error: BaseException) -> None:
    s.record_exception(error)
    s.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    s.set_attribute(A.ERROR_TYPE, type(error).__qualname__)


def _finish_own_span(s: trace.Span, scope: Scope, method: str) -> None:
    route = getattr(scope.get("route"), "path", None)  # low-cardinality name from the route template
    if route:
        s.update_name(f"{method} {route}")
        s.set_attribute(A.HTTP_ROUTE, route)
    s.end()
