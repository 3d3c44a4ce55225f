"""fathom.telemetry: OpenTelemetry tracing and Prometheus metrics, a thin layer at the seams.

- ``configure_tracing(component)``: the tracer provider from OTEL_* env (every process, once).
- ``inject()`` / ``extract()`` / ``attached()``: W3C context across Serve handles and actor calls.
- ``TracingMiddleware``: the ingress's HTTP SERVER span; ``auth_span``/``limits_span``/``route_span``.
- ``start_request_trace()``: the replica's ``chat {model}`` span and its queue/prefill/decode children.
- ``forward_step_span()``: a rank worker's step, linked to the requests in its batch.
- ``install_log_correlation()``: trace/span ids on every log record.
- ``FathomMetrics`` / ``process_metrics()``: the Prometheus metrics of docs/architecture.md;
  ``fathom.telemetry.hub`` (imports ray) aggregates them across processes for ``/metrics``.

Nothing here imports ray except ``fathom.telemetry.hub``, so the engine may use the rest.
"""

from fathom.telemetry.http import TracingMiddleware, note_request
from fathom.telemetry.logs import install_log_correlation
from fathom.telemetry.metrics import FathomMetrics, process_metrics
from fathom.telemetry.propagation import attached, extract, inject, traceparent
from fathom.telemetry.spans import (
    RequestTrace,
    auth_span,
    forward_step_span,
    limits_span,
    reject,
    route_span,
    set_tenant,
    span,
    start_request_trace,
)
from fathom.telemetry.tracing import (
    configure_tracing,
    flush_tracing,
    get_tracer,
    ray_runtime_env_vars,
    with_tracing_env,
)

__all__ = [
    "FathomMetrics",
    "RequestTrace",
    "TracingMiddleware",
    "attached",
    "auth_span",
    "configure_tracing",
    "extract",
    "flush_tracing",
    "forward_step_span",
    "get_tracer",
    "inject",
    "install_log_correlation",
    "limits_span",
    "note_request",
    "process_metrics",
    "ray_runtime_env_vars",
    "reject",
    "route_span",
    "set_tenant",
    "span",
    "start_request_trace",
    "traceparent",
    "with_tracing_env",
]
