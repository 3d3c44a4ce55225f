"""One call at the start of every Fathom process: ``start_telemetry(component)``.

It configures tracing (``configure_tracing``) and, inside a Ray worker, starts the metrics
pusher to the app's hub (``fathom.telemetry.hub``) with an optional ``before_push`` hook
(a model replica samples its engine's gauges there). Outside a Ray actor (tests,
``fathom.LLM``, a driver) only tracing is configured. Idempotent; never raises for telemetry's sake.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from fathom.telemetry.aggregate import MetricsAggregator, snapshot
from fathom.telemetry.metrics import FathomMetrics
from fathom.telemetry.tracing import configure_tracing

logger = logging.getLogger(__name__)


def start_telemetry(component: str, before_push: Callable[[], None] | None = None) -> None:
    """Tracing for this process, and the metrics pusher when running in a Ray worker."""
    configure_tracing(component)
    if not in_ray_actor():  # a driver with Ray up (tests, fathom.LLM) is not a replica of the app
        return
    try:
        from fathom.telemetry.hub import start_metrics_pusher

        start_metrics_pusher(component, before_push)
    except Exception:  # metrics must never keep a replica from starting
        logger.warning("could not start the metrics pusher", exc_info=True)


def in_ray_actor() -> bool:
    """Whether this process is a Ray actor (a Serve replica, a rank worker), not a driver."""
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - no Ray, or not connected
        return False


def replica_name() -> str:
    """This Serve replica's id (the ``replica`` label and ``fathom.replica``); the pid elsewhere."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not in a Serve replica
        return f"pid-{os.getpid()}"


async def render_metrics(metrics: FathomMetrics, vllm_aliases: bool = False) -> bytes:
    """``GET /metrics``: the whole app's numbers when this process pushes to the hub (a Serve
    replica), else ``metrics`` alone. Pushes this process's latest numbers first. With
    ``vllm_aliases`` the series also appear under vLLM's names."""
    from fathom.telemetry import hub

    if hub.pusher() is None:
        agg = MetricsAggregator()
        agg.update("local", snapshot(metrics.registry))
        return agg.render(vllm_aliases=vllm_aliases)
    pusher = hub.pusher()
    await pusher.push_now()
    return await pusher.hub.render.remote(vllm_aliases)
