"""fathom.telemetry: OpenTelemetry tracing and Prometheus metrics, a thin layer at the seams.

- ``configure_tracing(component)``: the tracer provider from OTEL_* env (every process, once).
- ``inject()`` / ``extract()`` / ``attached()``: W3C context across Serve handles and actor calls.
- ``TracingMiddleware``: the ingress's HTTP SERVER span; ``auth_span``/``limits_span``/``route_span``.
- ``start_request_trace()``: the replica's ``chat {model}`` span and its queue/prefill/decode children.
- ``forward_step_span()``: a rank worker's step, linked to the requests in its batch.
- ``install_log_correlation()``: trace/span ids on every log record.
- ``FathomMetrics`` / ``process_metrics()``: the Prometheus metrics of docs/architecture.md;
  ``fathom.telemetry.hub`` (imports ray) aggregates them across processes for ``/metrics``.

Nothing here imports ray except ``fathom.telemetry.hub``. Importing this package is cheap: each
name below loads its module (and the OpenTelemetry SDK, ASGI middleware, prometheus_client)
on first use.
"""

_EXPORTS = {
    "TracingMiddleware": "http", "note_request": "http",
    "install_log_correlation": "logs",
    "FathomMetrics": "metrics", "process_metrics": "metrics",
    "attached": "propagation", "extract": "propagation", "inject": "propagation", "traceparent": "propagation",
    "RequestTrace": "spans", "auth_span": "spans", "forward_step_span": "spans", "limits_span": "spans",
    "reject": "spans", "route_span": "spans", "set_tenant": "spans", "span": "spans",
    "start_request_trace": "spans",
    "configure_tracing": "tracing", "flush_tracing": "tracing", "get_tracer": "tracing",
    "ray_runtime_env_vars": "tracing", "with_tracing_env": "tracing",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fathom.telemetry' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"fathom.telemetry.{module}"), name)
