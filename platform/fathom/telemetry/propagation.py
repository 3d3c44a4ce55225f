"""W3C trace-context propagation across Ray Serve handles and actor calls.

Ray does not carry OpenTelemetry context between processes, so Fathom carries it
explicitly: the caller puts ``inject()`` (a small ``dict[str, str]`` with ``traceparent`` and,
when present, ``tracestate``/``baggage``) in the request it sends, and the callee opens its
spans under ``extract(carrier)`` or inside ``with attached(carrier):``. The carrier is plain
data (picklable, JSON-able) and empty when there is no active span.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context

Carrier = dict[str, str]


def inject(context: Context | None = None) -> Carrier:
    """The current (or given) context as a W3C carrier dict."""
    carrier: Carrier = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context:
    """The context carried by ``carrier`` (an empty context when it is None or empty)."""
    return propagate.extract(dict(carrier or {}))


@contextlib.contextmanager
def attached(carrier: Mapping[str, str] | None) -> Iterator[Context]:
    """Make the carried context current for the block (spans opened inside become children)."""
    ctx = extract(carrier)
    token = otel_context.attach(ctx)
    try:
        yield ctx
    finally:
        otel_context.detach(token)


def span_context_of(carrier: Mapping[str, str] | None) -> trace.SpanContext | None:
    """The remote span context in ``carrier`` (for span links), or None if it holds none.
    Parsed once per traceparent: a request's carrier is looked at every engine step."""
    if not carrier:
        return None
    if len(carrier) == 1 and "traceparent" in carrier:
        return _parse_traceparent(carrier["traceparent"])
    sc = trace.get_current_span(extract(carrier)).get_span_context()
    return sc if sc.is_valid else None


@functools.lru_cache(maxsize=8192)
def _parse_traceparent(value: str) -> trace.SpanContext | None:
    sc = trace.get_current_span(propagate.extract({"traceparent": value})).get_span_context()
    return sc if sc.is_valid else None


def traceparent(span: trace.Span | None = None) -> str | None:
    """The W3C ``traceparent`` header value of ``span`` (default: the current span)."""
    span = span or trace.get_current_span()
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def trace_id_hex(span: trace.Span | None = None) -> str | None:
    sc = (span or trace.get_current_span()).get_span_context()
    return f"{sc.trace_id:032x}" if sc.is_valid else None
