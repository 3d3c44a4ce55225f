"""The Ray Serve application: `ingress` (FastAPI, OpenAI routes) -> `model` (ModelServer replicas).

    HTTP -> Serve proxy -> ingress replica -> DeploymentHandle (stream) -> model replica -> AsyncEngine

Ray is a thin shell here: the ingress wraps `Frontend`/`build_api`, the model deployment wraps
`ModelServer`; both are plain classes tested without Ray. Each model replica is one model
instance; `num_replicas` of them are independent. The ingress reaches them through one
handle whose request router (`FathomRequestRouter`) prefers the replica that has the
request's prompt prefix cached unless it is much busier. `max_ongoing_requests` bounds each
replica's concurrency; beyond it, up to `max_queued_requests` wait in the ingress, and the
next one is refused with 429 + Retry-After at once (`Frontend.shed`, before its body is read).
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import CancelledError
from typing import Any

from ray import serve
from ray.exceptions import RayError
from ray.serve.config import RequestRouterConfig
from ray.serve.context import _get_global_client
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from fathom.api.openai_error import APIError
from fathom.api.serve import ServeSettings
from fathom.serve.frontend import OVERLOAD_RETRY_AFTER_S, Completion, Frontend
from fathom.serve.model_server import ModelServer
from fathom.serve.ray_tuning import grpc_between_deployments, serve_throughput_env
from fathom.serve.routes import build_api
from fathom.telemetry.generation import OPERATIONS
from fathom.telemetry.runtime import replica_name, start_telemetry
from fathom.telemetry.spans import open_route_span
from fathom.telemetry.tracing import with_tracing_env

logger = logging.getLogger("fathom.serve")
APP_NAME = "fathom"
MODEL_DEPLOYMENT = "model"
READY_PROBE_TIMEOUT_S = 2.0
REPLICA_COUNT_S = 10.0
REPLICA_CHANGE_S = 1.0


def _overloaded(e: BackPressureError) -> APIError:
    return APIError(
        429, "the model replicas are at capacity and their queues are full; retry later",
        code="overloaded", retry_after=OVERLOAD_RETRY_AFTER_S,
    )


class HandleBackend:
    """The frontend's backend over a Ray Serve handle to the model deployment."""

    def __init__(self, handle: DeploymentHandle):
        if grpc_between_deployments():  # the handle was built in the driver, with its default transport
            handle = handle.options(_by_reference=False)
        self._unary = handle
        self._streaming = handle.options(stream=True)

    async def complete(self, kind: str, req: Any, routing_key: int | None, tenancy=None) -> Completion | APIError:
        with open_route_span(req.model, OPERATIONS[kind]) as route:
            try:
                return await self._unary.complete.remote(kind, req, routing_key=routing_key, tenancy=tenancy,
                                                         trace_context=route.carrier)
            except BackPressureError as e:
                route.reject(429, str(e))
                return _overloaded(e)

    async def stream(self, kind: str, req: Any, routing_key: int | None, tenancy=None) -> AsyncIterator[Any]:
        with open_route_span(req.model, OPERATIONS[kind]) as route:
            gen = self._streaming.stream.remote(kind, req, routing_key=routing_key, tenancy=tenancy,
                                                trace_context=route.carrier)
            ended = False
            try:
                async for item in gen:
                    yield item
                ended = True
            except BackPressureError as e:
                ended = True
                route.reject(429, str(e))
                yield _overloaded(e)
            finally:
                if not ended:  # the client went away: cancel the replica call, which aborts the engine request
                    with contextlib.suppress(RayError, RayServeException, asyncio.CancelledError, CancelledError):
                        gen.cancel()

    async def tokenize(self, kind: str, req: Any) -> dict | APIError:
        return await self._unary.tokenize.remote(kind, req)

    async def running_replicas(self) -> int:
        """Model replicas RUNNING now, as the Serve controller reports them (fathom.serve.cold_start)."""
        return await asyncio.to_thread(_running_model_replicas)

    async def ready(self) -> dict | None:
        """Model info once a replica has loaded its model; None while none has (or on timeout)."""
        response = self._unary.ready.remote()
        try:
            return await asyncio.wait_for(_awaited(response), READY_PROBE_TIMEOUT_S)
        except TimeoutError:
            response.cancel()
            return None
        except (RayError, RayServeException):  # replicas not up yet, or being replaced
            return None


def _model_replica_counts() -> tuple[int, int]:
    """(RUNNING, target) replicas of this app's model deployment, from the Serve controller."""
    apps = _get_global_client().get_serve_details().get("applications") or {}
    model = ((apps.get(serve.get_replica_context().app_name) or {}).get("deployments") or {}).get(MODEL_DEPLOYMENT) or {}
    running = sum(1 for r in model.get("replicas") or [] if r.get("state") == "RUNNING")
    return running, model.get("target_num_replicas", 0)


def _running_model_replicas() -> int:
    app = serve.status().applications.get(serve.get_replica_context().app_name)
    model = app.deployments.get(MODEL_DEPLOYMENT) if app else None
    return model.replica_states.get("RUNNING", 0) if model else 0


async def _awaited(response):
    return await response


@serve.ingress()
class Ingress:
    def __init__(self, model: DeploymentHandle, settings: dict):
        self.frontend = Frontend(HandleBackend(model), ServeSettings.model_validate(settings))
        start_telemetry("ingress")
        threading.Thread(target=self._count_replicas, name="fathom-replica-count", daemon=True).start()

    def _count_replicas(self) -> None:
        """Every REPLICA_COUNT_S, on its own thread (never the event loop's): the model
        deployment's running and target replicas (fathom_model_replicas[_desired]), and the
        capacity the frontend sheds beyond; every REPLICA_CHANGE_S while they differ (replicas
        starting or going), so new capacity is used within a second."""
        while True:
            running = desired = None
            try:
                running, desired = _model_replica_counts()
                self.frontend.model_replicas = running  # the capacity the frontend sheds beyond
                self.frontend.metrics.metrics.model_replicas(self.frontend.model_name, replica_name(), running,
                                                             desired)
            except Exception as e:  # noqa: BLE001 - the controller restarting: count next time
                logger.warning("could not count the model replicas: %s: %s", type(e).__name__, e)
            time.sleep(REPLICA_COUNT_S if running == desired else REPLICA_CHANGE_S)

    def __serve_build_asgi_app__(self):
        return build_api(self.frontend)

    async def drain(self) -> int:
        """Stop accepting (503, /health 503); return the requests still in flight."""
        self.frontend.draining = True
        return self.frontend.inflight


def build_app(settings: ServeSettings, gpus_per_replica: float = 0.0) -> serve.Application:
    """The bound application (deploy with `serve.run(app, name=APP_NAME, route_prefix="/")`)."""
    wire = settings.model_dump(mode="json")
    runtime_env = with_tracing_env({"env_vars": serve_throughput_env()})
    model = serve.deployment(ModelServer).options(
        name=MODEL_DEPLOYMENT,
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        # The ingress sheds past max_queued_requests itself (Frontend.shed); Serve's router, which
        # also counts requests still being routed as queued, is the backstop with a replica's slack.
        max_queued_requests=settings.max_queued_requests + settings.max_ongoing_requests,
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
        health_check_period_s=10.0,
        health_check_timeout_s=60.0,
        ray_actor_options={"num_cpus": 0, "num_gpus": gpus_per_replica, "runtime_env": runtime_env},
        request_router_config=RequestRouterConfig(
            request_router_class="fathom.serve.router.FathomRequestRouter",
        ),
    )
    ingress_capacity = settings.num_replicas * (settings.max_ongoing_requests + settings.max_queued_requests) + 64
    ingress = serve.deployment(Ingress).options(
        name="ingress",
        num_replicas=1,
        max_ongoing_requests=ingress_capacity,
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
        ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env},
    )
    return ingress.bind(model.bind(wire), wire)


def app_from_config(settings: ServeSettings) -> serve.Application:
    """The app as a Serve config names it (`import_path: fathom.serve.app:app_from_config`, `args`:
    the ServeSettings): Serve calls a builder with exactly one argument, validated into the
    annotated model. GPUs come from the config's `ray_actor_options` of the model deployment."""
    return build_app(settings)
