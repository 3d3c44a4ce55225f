"""Trace ids in log records.

``install_log_correlation()`` wraps the process's log-record factory (once) so that every
record carries ``otelTraceID``, ``otelSpanID``, ``otelTraceSampled`` and ``otelServiceName``
(the field names of opentelemetry-instrumentation-logging), whichever logger or handler it
goes through. ``TraceContextFormatter`` appends ``trace_id=... span_id=...`` to any format;
``TraceContextFilter`` does the same job for a single handler when the factory is not wanted.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace

LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [trace_id=%(otelTraceID)s span_id=%(otelSpanID)s] %(message)s"
)
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
_installed = False


def _annotate(record: logging.LogRecord) -> logging.LogRecord:
    sc = trace.get_current_span().get_span_context()
    if sc.is_valid:
        record.otelTraceID, record.otelSpanID = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
        record.otelTraceSampled = sc.trace_flags.sampled
    else:
        record.otelTraceID, record.otelSpanID, record.otelTraceSampled = _NO_TRACE, _NO_SPAN, False
    record.otelServiceName = os.environ.get("OTEL_SERVICE_NAME", "fathom")
    return record


class TraceContextFilter(logging.Filter):
    """Adds the current trace and span ids to records passing a handler; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        _annotate(record)
        return True


class TraceContextFormatter(logging.Formatter):
    """``fmt`` (default: a plain one) followed by the record's trace and span ids."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", datefmt)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "otelTraceID"):
            _annotate(record)
        return f"{super().format(record)} trace_id={record.otelTraceID} span_id={record.otelSpanID}"


def install_log_correlation() -> None:
    """Make every log record of this process carry trace/span ids (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        return _annotate(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = True
