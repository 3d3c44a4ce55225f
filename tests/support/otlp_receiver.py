"""A minimal OTLP/HTTP receiver (protobuf) on loopback: for tests, examples and debugging.

It is a real HTTP server speaking the OTLP/HTTP binary protocol: ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` (optionally gzip-compressed), ``POST /v1/metrics`` with an
``ExportMetricsServiceRequest``, decoded with opentelemetry-proto into plain dataclasses.
Point any process at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint``::

    with OtlpReceiver() as rx:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.endpoint
        ...
        spans = rx.wait_for_spans(lambda spans: any(s.name == "chat demo" for s in spans))
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

PROTOBUF = "application/x-protobuf"
SPAN_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in PbSpan.SpanKind.items()}
STATUS_CODES = {v: k.removeprefix("STATUS_CODE_") for k, v in PbStatus.StatusCode.items()}


def any_value(v: AnyValue) -> Any:
    """An OTLP AnyValue as the Python value it encodes."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(any_value(x) for x in v.array_value.values)
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return None if which is None else getattr(v, which)


def attributes(kvs: list[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class ReceivedSpan:
    """One decoded span; ids are lower-case hex, ``parent_span_id`` is '' for a root span."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str  # SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id)
    status: str  # UNSET, OK, ERROR
    status_message: str
    resource: dict[str, Any]
    scope: str


def decode_spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=SPAN_KINDS[s.kind],
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=attributes(s.attributes),
                        events=tuple((e.name, attributes(e.attributes)) for e in s.events),
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                        status=STATUS_CODES[s.status.code],
                        status_message=s.status.message,
                        resource=resource,
                        scope=ss.scope.name,
                    )
                )
    return out


@dataclass(frozen=True)
class ReceivedPoint:
    """One metric data point: sums and gauges have ``value``; histograms ``count``/``sum``."""

    metric: str
    kind: str  # sum | gauge | histogram
    attributes: dict[str, Any]
    value: float | None
    count: int | None
    sum: float | None
    resource: dict[str, Any]


def decode_points(request: ExportMetricsServiceRequest) -> list[ReceivedPoint]:
    out = []
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for p in getattr(m, kind).data_points:
                    if kind == "histogram":
                        out.append(
                            ReceivedPoint(
                                m.name, kind, attributes(p.attributes), None, p.count, p.sum, resource
                            )
                        )
                    else:
                        value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                        out.append(
                            ReceivedPoint(m.name, kind, attributes(p.attributes), value, None, None, resource)
                        )
    return out


@dataclass
class _Store:
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    requests: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)


class _Handler(BaseHTTPRequestHandler):
    store: _Store  # set on the per-receiver subclass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        elif self.headers.get("Content-Encoding", "").lower() == "deflate":
            body = zlib.decompress(body)
        if self.headers.get("Content-Type", "").split(";")[0].strip() != PROTOBUF:
            return self._reply(415, b"only application/x-protobuf is supported", "text/plain")
        if self.path == "/v1/traces":
            decoded, response = (
                decode_spans(ExportTraceServiceRequest.FromString(body)),
                ExportTraceServiceResponse(),
            )
            self._add("spans", decoded)
        elif self.path == "/v1/metrics":
            decoded, response = (
                decode_points(ExportMetricsServiceRequest.FromString(body)),
                ExportMetricsServiceResponse(),
            )
            self._add("points", decoded)
        else:
            return self._reply(404, f"no OTLP signal at {self.path}".encode(), "text/plain")
        self._reply(200, response.SerializeToString(), PROTOBUF)

    def _add(self, what: str, items: list) -> None:
        with self.store.cond:
            getattr(self.store, what).extend(items)
            self.store.requests += 1
            self.store.cond.notify_all()

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass


class OtlpReceiver:
    """An OTLP/HTTP receiver on ``127.0.0.1`` (a free port unless given); a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = _Store()
        handler = type("Handler", (_Handler,), {"store": self.store})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (exporters append ``/v1/traces``)."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self.store.cond:
            return list(self.store.spans)

    @property
    def points(self) -> list[ReceivedPoint]:
        with self.store.cond:
            return list(self.store.points)

    def clear(self) -> None:
        with self.store.cond:
            self.store.spans.clear()
            self.store.points.clear()

    def wait_for_spans(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """Block until ``predicate(all spans so far)`` holds; TimeoutError names what arrived."""
        return self._wait("spans", predicate, timeout)

    def wait_for_points(
        self, predicate: Callable[[list[ReceivedPoint]], bool], timeout: float = 30.0
    ) -> list[ReceivedPoint]:
        return self._wait("points", predicate, timeout)

    def _wait(self, what: str, predicate: Callable, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        with self.store.cond:
            while not predicate(list(getattr(self.store, what))):
                left = deadline - time.monotonic()
                if left <= 0:
                    got = sorted(
                        {
                            getattr(x, "name", None) or getattr(x, "metric", "")
                            for x in getattr(self.store, what)
                        }
                    )
                    raise TimeoutError(
                        f"OTLP receiver: condition not met after {timeout}s; received {what}: {got}"
                    )
                self.store.cond.wait(left)
            return list(getattr(self.store, what))


def span_tree(spans: list[ReceivedSpan], trace_id: str) -> dict[str, list[str]]:
    """``{parent name: sorted child names}`` of one trace (root spans under ``''``)."""
    in_trace = [s for s in spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in in_trace}
    tree: dict[str, list[str]] = {}
    for s in in_trace:
        parent = by_id[s.parent_span_id].name if s.parent_span_id in by_id else ""
        tree.setdefault(parent, []).append(s.name)
    return {k: sorted(v) for k, v in tree.items()}
