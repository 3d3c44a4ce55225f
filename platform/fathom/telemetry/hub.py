"""One ``/metrics`` for the whole app: a named Ray actor aggregating every process's metrics.

Why not the alternatives: prometheus_client's multiprocess mode needs one shared directory
(replicas live on different nodes/pods); Ray's own metrics (``ray.util.metrics``) are exported
by each node's agent on another port with a ``ray_`` prefix, not on the app's ``/metrics``
under the names the autoscaler reads; and a Serve handle reaches one replica, not all of
them. So each process (ingress replicas, model replicas) runs a ``MetricsPusher`` that sends
its registry snapshot every ``FATHOM_METRICS_PUSH_INTERVAL_S`` seconds (default 2) to the
``MetricsHub`` actor, and any ingress replica answers ``GET /metrics`` with ``hub.render``.
Scrapes are consistent whichever ingress replica the proxy picks; counters of replicas that
went away are kept (see ``fathom.telemetry.aggregate``).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable

import ray

from fathom.telemetry.aggregate import FamilySnapshot, MetricsAggregator, snapshot
from fathom.telemetry.metrics import FathomMetrics, process_metrics

logger = logging.getLogger(__name__)

HUB_NAME = "fathom-metrics-hub"
HUB_NAMESPACE = "fathom"  # fixed, so Serve replicas and drivers of any namespace find it
PUSH_INTERVAL_ENV = "FATHOM_METRICS_PUSH_INTERVAL_S"


@ray.remote(num_cpus=0, max_restarts=-1, enable_task_events=False)  # a push per process every 2 s: no GCS task events
class MetricsHub:
    """Holds the latest snapshot of every source; renders the fleet's Prometheus text."""

    def __init__(self, stale_after: float = 30.0) -> None:
        self.aggregator = MetricsAggregator(stale_after=stale_after)

    def push(self, source: str, families: list[FamilySnapshot]) -> None:
        self.aggregator.update(source, families)

    def forget(self, source: str) -> None:
        self.aggregator.forget(source)

    def render(self, vllm_aliases: bool = False) -> bytes:
        return self.aggregator.render(vllm_aliases=vllm_aliases)

    def sources(self) -> list[str]:
        return sorted(self.aggregator.sources)


def get_hub(namespace: str = HUB_NAMESPACE) -> ray.actor.ActorHandle:
    """The app's hub, created on first use (detached, so it outlives the replica creating it)."""
    return MetricsHub.options(
        name=HUB_NAME, namespace=namespace, get_if_exists=True, lifetime="detached"
    ).remote()


class MetricsPusher:
    """Pushes this process's metrics snapshot to the hub every interval, from a daemon thread."""

    def __init__(
        self,
        component: str,
        metrics: FathomMetrics | None = None,
        interval: float | None = None,
        hub: ray.actor.ActorHandle | None = None,
        before_push: Callable[[], None] | None = None,
    ) -> None:
        self.source = f"{component}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.metrics = metrics or process_metrics()
        self.interval = float(os.environ.get(PUSH_INTERVAL_ENV, "2")) if interval is None else interval
        self.hub = hub or get_hub()
        self.before_push = before_push
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fathom-metrics-pusher", daemon=True)

    def start(self) -> MetricsPusher:
        self._thread.start()
        return self

    def push_now(self) -> ray.ObjectRef:
        """Send the current snapshot (returns the call's ref: ``ray.get`` it to wait)."""
        if self.before_push is not None:
            self.before_push()
        return self.hub.push.remote(self.source, snapshot(self.metrics.registry))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.push_now()
            except Exception:  # the hub restarting must not kill the replica
                logger.warning("metrics push to %s failed", HUB_NAME, exc_info=True)

    def stop(self) -> None:
        """Push a last snapshot, then tell the hub this source's gauges are gone."""
        self._stop.set()
        try:
            ray.get(self.push_now(), timeout=5)
            ray.get(self.hub.forget.remote(self.source), timeout=5)
        except Exception:
            logger.warning("final metrics push failed", exc_info=True)


_pusher: MetricsPusher | None = None
_pusher_lock = threading.Lock()


def start_metrics_pusher(component: str, before_push: Callable[[], None] | None = None) -> MetricsPusher:
    """Start this process's pusher once (call at actor start, next to ``configure_tracing``)."""
    global _pusher
    with _pusher_lock:
        if _pusher is None:
            _pusher = MetricsPusher(component, before_push=before_push).start()
        return _pusher


def pusher() -> MetricsPusher | None:
    """This process's pusher, if ``start_metrics_pusher`` ran."""
    return _pusher


def render_fleet_metrics(timeout: float = 10.0) -> bytes:
    """Prometheus text of the whole app, after pushing this process's latest numbers."""
    if _pusher is not None:
        ray.get(_pusher.push_now(), timeout=timeout)
    return ray.get(get_hub().render.remote(), timeout=timeout)
