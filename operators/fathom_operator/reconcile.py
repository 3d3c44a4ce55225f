"""The pure reconciliation of a ModelService: `reconcile(obj, observed) -> Result(children, status)`.

Level-based: the result depends only on the object and what is observed, never on the event
that woke the operator, so reconciling twice yields the same children and the same status
(conditions keep their `lastTransitionTime`). `children is None` means "touch nothing": the
spec is invalid (a running RayService keeps serving the last valid spec) or KubeRay is missing.
"""

from dataclasses import dataclass, field

from pydantic import ValidationError

from fathom.api.model_service import ModelServiceSpec
from fathom_operator import render, rollout
from fathom_operator.conditions import set_all
from fathom_operator.memory_fit import model_fits


@dataclass(frozen=True)
class Observed:
    """What the cluster holds now for one ModelService."""

    ray_service: dict | None = None
    service: dict | None = None
    kuberay_installed: bool = True
    now: str = ""
    incremental_upgrades: bool = False  # the RayService CRD has upgradeStrategy.clusterUpgradeOptions
    inference_pools: bool = False  # the cluster serves inference.networking.k8s.io/v1 InferencePools
    allow_host_path: bool = False  # the operator's --allow-host-path (an admin's choice, via the chart)


@dataclass(frozen=True)
class Result:
    children: list[dict] | None
    status: dict
    spec: ModelServiceSpec | None = field(default=None, compare=False)
    warning: str | None = None  # for a Warning Event (e.g. an upgrade strategy KubeRay lacks)


def parse_spec(raw: dict) -> ModelServiceSpec | str:
    """The validated spec, or one message naming every bad field (`spec.<path>: <problem>`)."""
    try:
        return ModelServiceSpec.model_validate(raw or {})
    except ValidationError as exc:
        return "; ".join(describe_error(err) for err in exc.errors())


def describe_error(err: dict) -> str:
    """One pydantic error as `spec.<camelCase path>: <problem>`."""
    msg = err["msg"].removeprefix("Value error, ")
    loc = ".".join(str(p) for p in err["loc"])
    if msg.startswith("spec.") or not loc:
        return msg
    return f"spec.{loc}: {msg}"


def owner_of(obj: dict) -> render.Owner:
    return render.owner_of_meta(obj["metadata"])


def desired_replicas(spec: ModelServiceSpec, status: dict) -> int:
    """Instances to run: spec.replicas without autoscaling, else the autoscaler's last word, clamped."""
    auto = spec.autoscaling
    if not auto.enabled:
        return spec.replicas
    current = status.get("desiredReplicas")
    if current is None:
        current = spec.replicas
    return max(auto.min_replicas, min(auto.max_replicas, int(current)))


def reconcile(obj: dict, observed: Observed) -> Result:
    """Children to apply and the status to write for the ModelService `obj`."""
    generation = obj.get("metadata", {}).get("generation")
    old = obj.get("status") or {}
    spec = parse_spec(obj.get("spec") or {})
    if isinstance(spec, str):
        kept = " (the existing RayService keeps serving the last valid spec)" if observed.ray_service else ""
        return Result(None, _status(old, generation, observed.now, "Invalid", {
            "Ready": (False, "InvalidSpec", spec + kept),
            "Progressing": (False, "InvalidSpec", "fix the spec to continue"),
            "Degraded": (True, "InvalidSpec", spec),
        }))
    owner = owner_of(obj)
    if not observed.kuberay_installed:
        message = ("the ray.io/v1 RayService CRD is not installed: install the KubeRay operator "
                   "(helm install kuberay-operator kuberay/kuberay-operator)")
        return Result(None, _status(old, generation, observed.now, "Pending", {
            "Ready": (False, "KubeRayNotInstalled", message),
            "Progressing": (False, "KubeRayNotInstalled", "waiting for the RayService CRD"),
            "Degraded": (True, "KubeRayNotInstalled", message),
        }), spec)
    if spec.model is not None and spec.model.host_path is not None and not observed.allow_host_path:
        message = ("spec.model.hostPath mounts a node directory into the Ray pods; this operator refuses it "
                   "unless an admin enables it (chart value operator.allowHostPath)")
        return Result(None, _status(old, generation, observed.now, "Invalid", {
            "Ready": (False, "HostPathNotAllowed", message),
            "Progressing": (False, "HostPathNotAllowed", "use a PVC or a URI"),
            "Degraded": (True, "HostPathNotAllowed", message),
        }), spec)
    fits = model_fits(spec)
    if fits is not None and not fits[0]:  # no pods that would only die of OOM
        kept = " (the existing RayService keeps serving the last spec that fit)" if observed.ray_service else ""
        return Result(None, _status(old, generation, observed.now, "Invalid", {
            "Ready": (False, fits[1], fits[2] + kept),
            "Progressing": (False, fits[1], "give each rank more GPU memory, more ranks, or FP8 weights/KV cache"),
            "Degraded": (True, fits[1], fits[2]),
            "ModelFits": fits,
        }), spec)
    replicas = desired_replicas(spec, old)
    upgrade, warning = rollout.strategy(spec, observed.incremental_upgrades)
    children = [*render.cache_children(spec, owner), render.ray_service(spec, owner, replicas, upgrade),
                render.api_service(spec, owner)]
    if spec.inference_pool.enabled and observed.inference_pools:
        children.append(render.inference_pool(spec, owner))
    elif spec.inference_pool.enabled:
        warning = "; ".join(filter(None, [warning, (
            "spec.inferencePool is enabled but the cluster has no inference.networking.k8s.io/v1 InferencePool "
            "CRD (install the Gateway API Inference Extension); none was created")]))
    ready, phase, conditions = _progress(spec, observed.ray_service, replicas)
    if fits is not None:
        conditions["ModelFits"] = fits
    status = _status(old, generation, observed.now, phase, conditions)
    status.update({
        "replicas": replicas, "readyReplicas": ready, "desiredReplicas": replicas,
        "endpoint": _endpoint(spec, owner, observed.service), "selector": render.worker_selector(owner),
        "rayService": owner.name, "upgradeStrategy": upgrade["type"],
    })
    if old.get("desiredReplicas") != replicas or not old.get("lastScaleTime"):
        status["lastScaleTime"] = observed.now
    else:
        status["lastScaleTime"] = old["lastScaleTime"]
    return Result(children, status, spec, warning)


def _endpoint(spec: ModelServiceSpec, owner: render.Owner, service: dict | None) -> str:
    """The load balancer's address once it has one, else the in-cluster Service URL."""
    ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if spec.service.type == "LoadBalancer" and ingress:
        host = ingress[0].get("hostname") or ingress[0].get("ip")
        if host:
            return f"http://{host}:{spec.service.port}"
    return render.endpoint(spec, owner)


def _status(old: dict, generation: int | None, now: str, phase: str, values: dict) -> dict:
    status = {k: v for k, v in old.items() if k in ("replicas", "readyReplicas", "desiredReplicas", "lastScaleTime",
                                                     "endpoint", "selector", "rayService", "upgradeStrategy")}
    status["phase"] = phase
    status["observedGeneration"] = generation
    status["conditions"] = set_all(old.get("conditions") or [], values, generation=generation, now=now)
    return status


def _progress(spec: ModelServiceSpec, ray_service: dict | None, replicas: int) -> tuple[int, str, dict]:
    """(ready instances, phase, conditions) read from the RayService's status as KubeRay reports it."""
    active = ((ray_service or {}).get("status") or {}).get("activeServiceStatus") or {}
    app = (active.get("applicationStatuses") or {}).get(render.APP_NAME) or {}
    app_status = app.get("status") or "NOT_STARTED"
    workers = (active.get("rayClusterStatus") or {}).get("readyWorkerReplicas") or 0
    ready = min(replicas, workers // spec.pods_per_instance) if app_status == "RUNNING" else 0
    if app_status in ("DEPLOY_FAILED", "UNHEALTHY"):
        message = app.get("message") or f"Serve application {render.APP_NAME} is {app_status}"
        return ready, "Degraded", {
            "Ready": (ready > 0, f"Serve{app_status.title().replace('_', '')}", message),
            "Progressing": (False, "ServeAppFailed", message),
            "Degraded": (True, f"Serve{app_status.title().replace('_', '')}", message),
        }
    if app_status == "RUNNING" and replicas == 0:
        msg = "scaled to zero; the ingress stays up and the first queued request scales to one"
        return 0, "ScaledToZero", {"Ready": (True, "ScaledToZero", msg), "Progressing": (False, "ScaledToZero", msg),
                                   "Degraded": (False, "AsExpected", "")}
    if app_status == "RUNNING" and ready >= replicas:
        msg = f"{ready}/{replicas} replicas ready"
        upgrading = rollout.progress(ray_service)
        if upgrading is not None:
            return ready, "Ready", {"Ready": (True, "AllReplicasReady", msg), "Progressing": (True, *upgrading),
                                    "Degraded": (False, "AsExpected", "")}
        if _kuberay_behind(ray_service):
            return ready, "Ready", {"Ready": (True, "AllReplicasReady", msg),
                                    "Progressing": (True, "RayServiceUpdating", "KubeRay is applying the new spec"),
                                    "Degraded": (False, "AsExpected", "")}
        return ready, "Ready", {"Ready": (True, "AllReplicasReady", msg), "Progressing": (False, "Complete", msg),
                                "Degraded": (False, "AsExpected", "")}
    waiting = f"{ready}/{replicas} replicas ready; Serve application {app_status}"
    if ray_service is None or not active:
        waiting = "RayService created; waiting for KubeRay to start the cluster"
    return ready, ("Ready" if ready else "Deploying"), {
        "Ready": (ready > 0, "ReplicasReady" if ready else "Deploying", waiting),
        "Progressing": (True, "Deploying" if not ready else "Scaling", waiting),
        "Degraded": (False, "AsExpected", ""),
    }


def _kuberay_behind(ray_service: dict | None) -> bool:
    """KubeRay has not yet observed the RayService's latest spec (its status is from before)."""
    generation = ((ray_service or {}).get("metadata") or {}).get("generation")
    observed = ((ray_service or {}).get("status") or {}).get("observedGeneration")
    return generation is not None and observed is not None and observed < generation
