"""Tracer-provider setup, the same in every Fathom process (CLI, ingress, replica, rank worker).

Configuration is the standard OpenTelemetry environment, read where the SDK reads it:

- ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console``, ``none`` (or any name registered
  under the ``opentelemetry_traces_exporter`` entry point). Unset means ``otlp`` when an OTLP
  endpoint is configured (``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``), otherwise ``none``: a local
  ``fathom serve`` must not spam connection errors for a collector that does not exist.
- ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``: ``http/protobuf`` (default, as the OTel spec says)
  or ``grpc``. Endpoint, headers, timeout, compression are read by the exporters themselves.
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: read by ``Resource.create``; the service
  name defaults to ``fathom``. Every process adds ``fathom.component`` (ingress, replica, rank...).
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: read by ``TracerProvider`` itself.
- ``OTEL_BSP_*``: read by ``BatchSpanProcessor``.

``configure_tracing(component)`` is idempotent per process: the first call that has somewhere
to send spans installs the global provider, later calls return it; with ``none`` nothing is
installed and spans cost nothing. Ray workers get the same environment through
``ray_runtime_env_vars()``, merged into the actor's ``runtime_env={"env_vars": ...}``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from fathom.telemetry.logs import install_log_correlation

logger = logging.getLogger(__name__)

INSTRUMENTATION_SCOPE = "fathom"
DEFAULT_SERVICE_NAME = "fathom"
# Environment forwarded to Ray workers so that every process configures itself the same way.
FORWARDED_ENV_PREFIXES = ("OTEL_", "FATHOM_TRACE_", "FATHOM_METRICS_")

_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_lock = threading.Lock()
_provider: TracerProvider | None = None
_component: str | None = None


def configure_tracing(
    component: str, *, span_processors: Sequence[SpanProcessor] = (), environ: dict[str, str] | None = None
) -> TracerProvider | None:
    """Install this process's global tracer provider from the OTEL_* environment (once).

    ``component`` names the process's role (``ingress``, ``replica``, ``rank``, ``cli``...) and is
    recorded as the ``fathom.component`` resource attribute. When no exporter is selected and
    no ``span_processors`` are given, nothing is installed: tracing that goes nowhere costs
    nothing (spans are no-ops) and the call returns None. ``span_processors`` are added to the
    provider, installing it if need be (tests pass ``SimpleSpanProcessor(InMemorySpanExporter())``).
    Raises ``ValueError`` naming the variable when an exporter or protocol is unknown.
    """
    global _provider, _component
    with _lock:
        if _provider is None:
            env = os.environ if environ is None else environ
            exporters = build_span_exporters(env)
            if exporters or span_processors:
                _provider = _install(component, env, exporters)
            _component = _component or component
            install_log_correlation()
        for processor in span_processors:
            _provider.add_span_processor(processor)
        return _provider


def _install(component_name: str, env: dict[str, str], exporters: list[SpanExporter]) -> TracerProvider:
    provider = TracerProvider(resource=build_resource(component_name, env))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        # Someone (e.g. opentelemetry-instrument) installed a provider first: use theirs.
        logger.warning("a global tracer provider was already set; Fathom uses it as is")
        other = trace.get_tracer_provider()
        provider = other if isinstance(other, TracerProvider) else provider
    atexit.register(flush_tracing)
    return provider


def tracing_configured() -> bool:
    return _provider is not None


def component() -> str | None:
    """The role passed to ``configure_tracing`` in this process, if any."""
    return _component


def get_tracer() -> trace.Tracer:
    """Fathom's tracer (a no-op tracer until ``configure_tracing`` ran)."""
    return trace.get_tracer(INSTRUMENTATION_SCOPE)


def flush_tracing(timeout_millis: int = 5000) -> bool:
    """Export finished spans now (call before a process ends, e.g. on actor shutdown)."""
    return _provider.force_flush(timeout_millis) if _provider is not None else True


def build_resource(component_name: str, env: dict[str, str]) -> Resource:
    attributes = {
        "fathom.component": component_name,
        "service.instance.id": f"{component_name}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        "process.pid": os.getpid(),
    }
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (from os.environ).
    return Resource.create(attributes)


def exporter_names(env: dict[str, str]) -> list[str]:
    """Entry-point names of the span exporters selected by OTEL_TRACES_EXPORTER (see module doc)."""
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        raw = "otlp" if has_endpoint else "none"
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if not names or names == ["none"]:
        return []
    if "none" in names:
        raise ValueError(f"OTEL_TRACES_EXPORTER={raw!r}: 'none' cannot be combined with other exporters")
    return [_resolve_otlp(n, env) if n == "otlp" else n for n in names]


def _resolve_otlp(name: str, env: dict[str, str]) -> str:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in _OTLP_BY_PROTOCOL:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; "
            f"use one of {sorted(_OTLP_BY_PROTOCOL)}"
        )
    return _OTLP_BY_PROTOCOL[protocol]


def build_span_exporters(env: dict[str, str]) -> list[SpanExporter]:
    """Instantiate the selected exporters; each reads its own OTEL_EXPORTER_* settings."""
    from opentelemetry.util._importlib_metadata import entry_points

    exporters = []
    for name in exporter_names(env):
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names unknown exporter {name!r}; "
                "use otlp, console or none (or install the package that provides it)"
            )
        exporters.append(found[0].load()())
    return exporters


def ray_runtime_env_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The OTEL_*/FATHOM_TRACE_*/FATHOM_METRICS_* variables of this process, for a Ray
    ``runtime_env={"env_vars": ...}`` so that workers on other nodes trace the same way."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def with_tracing_env(runtime_env: dict | None = None) -> dict:
    """``runtime_env`` with the tracing variables merged under ``env_vars`` (explicit ones win)."""
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {**ray_runtime_env_vars(), **runtime_env.get("env_vars", {})}
    return runtime_env


def _reset_for_tests() -> None:
    """Forget this module's provider (the global OTel provider cannot be unset: tests that need
    a fresh one use ``opentelemetry.trace._TRACER_PROVIDER_SET_ONCE`` via the test fixture)."""
    global _provider, _component
    if _provider is not None:
        _provider.shutdown()
    _provider, _component = None, None
