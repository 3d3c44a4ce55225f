"""The autoscaling loop of one ModelService (run as a kopf daemon, one per object).

Every `autoscaling.intervalSeconds` it reads the app's /metrics from the API Service it owns
(the operator's `--metrics-url-template`, set by whoever installs the operator; never a URL
from the object itself: an annotation would let anyone who may edit a ModelService point the
operator's requests anywhere in the cluster), derives a sample, asks the pure policy for a
count, and on a change writes `status.desiredReplicas` / `lastScaleTime`, re-renders the
RayService (model deployment `num_replicas` and worker group size) and emits an Event.
"""

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from fathom_operator import credentials, kube, render, scrape
from fathom_operator.conditions import now_rfc3339
from fathom_operator.kube import KubeClient
from fathom_operator.reconcile import desired_replicas, owner_of, parse_spec
from fathom_operator.scaling_policy import ScalingDecision, decide, history_span
from fathom_operator.sync import sync_model_service

DEFAULT_METRICS_URL = "http://{service}.{namespace}.svc:{port}/metrics"
IDLE_POLL_SECONDS = 15.0


def metrics_url(obj: dict, port: int, template: str = DEFAULT_METRICS_URL) -> str:
    """Where the app's metrics are read: the API Service this operator rendered for `obj`."""
    owner = owner_of(obj)
    return template.format(service=render.api_service_name(owner), namespace=owner.namespace, port=port,
                           name=owner.name)


Notify = Callable[[dict, str, str], Awaitable[None] | None]


async def scale(client: KubeClient, obj: dict, current: int, decision: ScalingDecision, notify: Notify | None,
                allow_host_path: bool = False, metrics_key_secret: str | None = None) -> None:
    """Record the decision in the ModelService status, re-render the RayService, emit an Event."""
    meta = obj["metadata"]
    await client.patch(kube.MODEL_SERVICES, meta["namespace"], meta["name"],
                       {"status": {"desiredReplicas": decision.replicas, "lastScaleTime": now_rfc3339()}}, sub="status")
    await sync_model_service(client, obj, allow_host_path=allow_host_path, metrics_key_secret=metrics_key_secret)
    if notify is not None:
        result = notify(obj, "Scaled", f"replicas {current} -> {decision.replicas}: {decision.reason}")
        if asyncio.iscoroutine(result):
            await result


async def run(client: KubeClient, namespace: str, name: str, stopped, *, notify: Notify | None = None,
              url_template: str = DEFAULT_METRICS_URL, logger: logging.Logger | None = None,
              allow_host_path: bool = False, metrics_key_secret: str | None = None) -> None:
    """Loop until `stopped` (kopf.DaemonStopped or anything with `wait(timeout)` and truthiness).
    Scrapes carry the scrape key of `metrics_key_secret` (fathom_operator.credentials), read
    again after a failed scrape (the Secret may have been made or replaced meanwhile)."""
    log = logger or logging.getLogger(__name__)
    history: collections.deque[scrape.Sample] = collections.deque()
    previous: scrape.Scrape | None = None
    failing = False  # log a metrics outage once, and its end
    key: str | None = None
    async with aiohttp.ClientSession() as http:
        while not stopped:
            obj = await client.get(kube.MODEL_SERVICES, namespace, name)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return
            spec = parse_spec(obj.get("spec") or {})
            if isinstance(spec, str) or not spec.autoscaling.enabled:
                history.clear()
                previous = None
                await stopped.wait(IDLE_POLL_SECONDS if isinstance(spec, str) else spec.autoscaling.interval_seconds)
                continue
            auto = spec.autoscaling
            try:
                if key is None or failing:
                    key = await credentials.scrape_key(client, metrics_key_secret)
                now = await scrape.fetch(http, metrics_url(obj, spec.service.port, url_template), time.monotonic(),
                                         key=key)
            except (TimeoutError, aiohttp.ClientError, ValueError, kube.ApiError) as exc:  # ApiError: reading the key
                (log.debug if failing else log.warning)("metrics of %s/%s unavailable (holding the "
                                                        "replica count): %s", namespace, name, exc)
                failing = True
                await stopped.wait(auto.interval_seconds)
                continue
            if failing:
                log.info("metrics of %s/%s available again", namespace, name)
                failing = False
            history.append(scrape.derive(previous, now))
            previous = now
            while history and history[0].t < now.t - history_span(auto):
                history.popleft()
            current = desired_replicas(spec, obj.get("status") or {})
            decision = decide(list(history), auto, current)
            if decision.replicas != current:
                log.info("scaling %s/%s %d -> %d: %s", namespace, name, current, decision.replicas, decision.reason)
                await scale(client, obj, current, decision, notify, allow_host_path, metrics_key_secret)
            await stopped.wait(auto.interval_seconds)
