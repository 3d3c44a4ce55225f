"""Render a ModelService into its children: one KubeRay `RayService` and one API `Service`.

Layout of the RayService (ray.io/v1):
- head group: CPU only (`num-cpus: 0` keeps rank workers off it); runs the Serve controller,
  the HTTP proxy and the Fathom ingress, which stays up at zero model replicas and reports queued
  requests. The dashboard cannot be off or on loopback: KubeRay deploys `serveConfigV2` and
  reads Serve's status through it (`PUT/GET /api/serve/applications/` from the KubeRay pod). It
  listens inside the cluster only (ClusterIP head service, no ingress), answers only Ray's token
  and the chart's NetworkPolicy admits only KubeRay's pods to it.
- Ray token auth (`authOptions`, KubeRay >= 1.5, Ray >= 2.52): the token is the ModelService's
  auth Secret (fathom_operator.credentials); every Ray container gets RAY_AUTH_MODE and
  RAY_AUTH_TOKEN (pods.env_vars), KubeRay adds them to its own containers (autoscaler sidecar,
  wait-gcs-ready) and sends the token to the dashboard.
- one worker group `ranks`: pods of `ranksPerPod` ranks each; replicas = instances × pods per
  instance. KubeRay applies replica changes of a worker group to the running cluster in place.
- `serveConfigV2`: the Fathom app (`fathom.serve.app:app_from_config`, whose argument is the
  `ServeSettings` model: engine settings, tenants file, HTTP bind, cold-start bound) and a
  `deployments` override with the model deployment's count (`replica_count`). Scaling changes only that override, which Ray
  Serve applies in place (a change of `args` would rebuild the app and restart every replica);
  `args.numReplicas` is maxReplicas, which only sizes the ingress queue. The model deployment
  asks for the custom resource `fathom_worker`, which only worker pods advertise, so a model
  replica never lands on the head; with TP 1 it also takes the rank's GPU (the engine then runs
  in the replica), with TP > 1 the rank workers it starts take them.
"""

import json
from dataclasses import dataclass

import yaml

from fathom.api.model_service import API_VERSION, ModelServiceSpec
from fathom.api.serve import RAY_SERVE_THROUGHPUT_ENV
from fathom_operator import model_cache, pods

APP_NAME = "fathom"
IMPORT_PATH = "fathom.serve.app:app_from_config"
MODEL_DEPLOYMENT = "model"  # fathom.serve.app names its deployments "ingress" and "model"
SERVE_PORT = 8000
WORKER_GROUP = "ranks"
WORKER_RESOURCE = "fathom_worker"  # advertised by worker pods only; model replicas require it
LABEL = "fathom.dev/model-service"
MANAGED_BY = "fathom-operator"


@dataclass(frozen=True)
class Owner:
    """The ModelService being rendered (what owner references and labels need)."""

    name: str
    namespace: str
    uid: str
    kind: str = "ModelService"

    def reference(self) -> dict:
        return {"apiVersion": API_VERSION, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def owner_of_meta(meta: dict) -> Owner:
    return Owner(name=meta["name"], namespace=meta.get("namespace", "default"), uid=meta.get("uid", ""))


def labels(owner: Owner) -> dict[str, str]:
    return {"app.kubernetes.io/name": "fathom", "app.kubernetes.io/instance": owner.name,
            "app.kubernetes.io/managed-by": MANAGED_BY, LABEL: owner.name}


def worker_selector(owner: Owner) -> str:
    """Label selector of the model worker pods (the /scale subresource's `status.selector`)."""
    return f"{LABEL}={owner.name},ray.io/node-type=worker"


def auth_secret_name(owner: Owner) -> str:
    """The ModelService's Ray token and scrape key digest (fathom_operator.credentials)."""
    return f"{owner.name}-fathom-auth"


def metadata(owner: Owner, name: str) -> dict:
    return {"name": name, "namespace": owner.namespace, "labels": labels(owner), "ownerReferences": [owner.reference()]}


def serve_args(spec: ModelServiceSpec, owner: Owner) -> dict:
    """The app's `ServeSettings` (wire form): constant while scaling, so scaling rebuilds nothing."""
    engine = spec.engine.model_copy(update={"model": spec.model.checkpoint_dir if spec.model else None})
    args = {"engine": engine.to_wire(), "numReplicas": max(1, spec.autoscaling.max_replicas),
            "tenants": pods.TENANTS_FILE, "metricsKeyFile": pods.METRICS_KEY_FILE, "host": "0.0.0.0", "port": SERVE_PORT,
            "coldStartTimeoutS": spec.autoscaling.cold_start_timeout_seconds,
            "gracefulShutdownTimeoutS": pods.drain_seconds(spec),
            "vllmMetricAliases": spec.metrics.vllm_aliases}
    ft = spec.fault_tolerance
    if ft is not None and ft.usage_ledger:
        args.update(usageStore=f"redis://{ft.redis_address}/0", usageKey=f"fathom/{owner.namespace}/{owner.name}")
    return args


def serve_config(spec: ModelServiceSpec, owner: Owner, replicas: int) -> str:
    """serveConfigV2: the Fathom application, its settings, and the model deployment's replicas."""
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": IMPORT_PATH,
            "args": serve_args(spec, owner),
            "deployments": [{"name": MODEL_DEPLOYMENT, **replica_count(replicas),
                             "ray_actor_options": model_actor_options(spec)}],
        }],
    }
    return yaml.safe_dump(config, sort_keys=False)


def replica_count(replicas: int) -> dict:
    """The model deployment's count in Serve's config schema, whose `num_replicas` must be >= 1:
    zero is Serve autoscaling pinned to [0, 1] starting at 0. The ingress holds requests while
    no replica runs (so Serve's autoscaler sees none queued) and the operator wakes the model;
    should a request reach Serve's queue anyway (a scale-down racing it), Serve wakes one itself."""
    if replicas > 0:
        return {"num_replicas": replicas}
    return {"autoscaling_config": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}}


def model_actor_options(spec: ModelServiceSpec) -> dict:
    """Ray resources of one model replica (the deployment's actor, not its rank workers)."""
    single_rank = spec.ranks_per_instance == 1
    return {"num_cpus": 0 if spec.resources.gpus or not single_rank else 1,
            "num_gpus": spec.resources.gpus if single_rank else 0,
            "resources": {WORKER_RESOURCE: 1}}


def _ray_resources(resources: dict[str, int]) -> str:
    """rayStartParams `resources` as KubeRay wants it: a quoted JSON object."""
    return '"' + json.dumps(resources).replace('"', '\\"') + '"'


def _container(spec: ModelServiceSpec, owner: Owner, role: str, resources: dict, *, shm: bool, ports: list[dict],
               cache: dict | None = None) -> dict:
    env = pods.env_vars(spec, defaults=RAY_SERVE_THROUGHPUT_ENV, ray_auth_secret=auth_secret_name(owner))
    return {
        "name": f"ray-{role}", "image": spec.image, "imagePullPolicy": spec.image_pull_policy,
        "resources": resources, "env": env, "ports": ports,
        "volumeMounts": pods.volume_mounts(spec, shm=shm, cache=cache),
        "securityContext": pods.container_security_context(),
        "lifecycle": pods.lifecycle(spec, role),
    }


def head_group(spec: ModelServiceSpec, owner: Owner) -> dict:
    res = {"cpu": str(spec.head.cpu), "memory": str(spec.head.memory)}
    ports = [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
             {"name": "client", "containerPort": 10001}, {"name": "serve", "containerPort": SERVE_PORT}]
    return {
        "serviceType": "ClusterIP",
        "enableIngress": False,
        "rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": labels(owner)},
            "spec": {
                "initContainers": pods.fetch_init_containers(spec, tokenizer_only=True),
                "containers": [_container(spec, owner, "head", {"requests": res, "limits": res}, shm=False, ports=ports)],
                "volumes": pods.volumes(spec, auth_secret_name(owner), shm=False),
                "securityContext": pods.pod_security_context(),
                "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
            },
        },
    }


def worker_group(spec: ModelServiceSpec, owner: Owner, replicas: int) -> dict:
    r, k = spec.resources, spec.ranks_per_pod
    requests = {"cpu": pods.scale_quantity(r.cpu, k), "memory": pods.scale_quantity(r.memory, k)}
    limits = {"memory": requests["memory"]}
    if r.gpus:
        requests[r.gpu_resource_name] = limits[r.gpu_resource_name] = str(r.gpus * k)
    cache = model_cache.volume(spec, owner.name)
    pod_spec = {
        "initContainers": (model_cache.worker_init_containers(spec) if cache
                           else pods.fetch_init_containers(spec, tokenizer_only=False)),
        "containers": [_container(spec, owner, "worker", {"requests": requests, "limits": limits}, shm=bool(r.gpus),
                                  ports=[{"name": "serve", "containerPort": SERVE_PORT}], cache=cache)],
        "volumes": pods.volumes(spec, auth_secret_name(owner), shm=bool(r.gpus), cache=cache),
        "securityContext": pods.pod_security_context(),
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "nodeSelector": dict(r.node_selector),
        "tolerations": [t.to_wire() for t in r.tolerations],
    }
    pods_per_instance = spec.pods_per_instance
    max_instances = max(spec.autoscaling.max_replicas if spec.autoscaling.enabled else replicas, replicas)
    return {
        "groupName": WORKER_GROUP,
        "replicas": replicas * pods_per_instance,
        "minReplicas": replicas * pods_per_instance,
        "maxReplicas": max_instances * pods_per_instance,
        "numOfHosts": 1,
        "rayStartParams": {"resources": _ray_resources({WORKER_RESOURCE: 1000})},
        "template": {"metadata": {"labels": labels(owner)}, "spec": pod_spec},
    }


def ray_service(spec: ModelServiceSpec, owner: Owner, replicas: int,
                upgrade: dict | None = None) -> dict:
    """The RayService for `replicas` model instances; `upgrade`: its upgradeStrategy
    (`fathom_operator.rollout.strategy`, default NewCluster)."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata(owner, owner.name),
        "spec": {
            "serveConfigV2": serve_config(spec, owner, replicas),
            "upgradeStrategy": upgrade or {"type": "NewCluster"},
            "rayClusterConfig": {
                # The Ray autoscaler removes only idle worker pods when minReplicas drops, so a
                # scale-down never kills a rank that still holds a live Serve replica.
                "enableInTreeAutoscaling": True,
                "authOptions": {"mode": "token", "secretName": auth_secret_name(owner)},
                # The autoscaler sidecar runs in the head pod, as locked down as the Ray container
                # (KubeRay adds the shared /tmp/ray log volume to both).
                "autoscalerOptions": {"idleTimeoutSeconds": 60, "upscalingMode": "Default",
                                      "securityContext": pods.container_security_context(),
                                      "volumeMounts": pods.scratch_mounts()},
                "headGroupSpec": head_group(spec, owner),
                "workerGroupSpecs": [worker_group(spec, owner, replicas)],
                **gcs_fault_tolerance(spec),
            },
        },
    }


def gcs_fault_tolerance(spec: ModelServiceSpec) -> dict:
    """KubeRay's gcsFaultToleranceOptions on the spec's Redis (its storage namespace stays
    KubeRay's default, the RayCluster's uid: two clusters of an upgrade must not share one)."""
    ft = spec.fault_tolerance
    if ft is None:
        return {}
    options: dict = {"redisAddress": ft.redis_address}
    if ft.redis_password_secret is not None:
        ref = ft.redis_password_secret
        options["redisPassword"] = {"valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    return {"gcsFaultToleranceOptions": options}


def cache_children(spec: ModelServiceSpec, owner: Owner) -> list[dict]:
    """The claim and the Job of a Shared model cache (none otherwise)."""
    if spec.model is None or not spec.model.cached:
        return []
    claim = model_cache.claim(spec, metadata(owner, model_cache.claim_name(spec, owner.name)))
    job = model_cache.fill_job(spec, metadata(owner, f"{owner.name}-model-cache-{spec.model.cache_key}"), owner.name)
    return [c for c in (claim, job) if c is not None]


def inference_pool(spec: ModelServiceSpec, owner: Owner) -> dict:
    """The InferencePool over the pods the API Service selects (Serve proxies, port 8000)."""
    pool_spec: dict = {"selector": {"matchLabels": {LABEL: owner.name, "ray.io/serve": "true"}},
                       "targetPorts": [{"number": SERVE_PORT}]}
    pool = spec.inference_pool
    if pool.endpoint_picker:
        pool_spec["endpointPickerRef"] = {"name": pool.endpoint_picker, "port": {"number": pool.endpoint_picker_port},
                                          "failureMode": pool.failure_mode}
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": metadata(owner, owner.name), "spec": pool_spec}


def api_service_name(owner: Owner) -> str:
    return f"{owner.name}-api"


def api_service(spec: ModelServiceSpec, owner: Owner) -> dict:
    """The Service in front of the OpenAI API: every Ray pod whose Serve proxy is healthy."""
    meta = metadata(owner, api_service_name(owner))
    if spec.service.annotations:
        meta["annotations"] = dict(spec.service.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": spec.service.type,
            "selector": {LABEL: owner.name, "ray.io/serve": "true"},
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": SERVE_PORT, "protocol": "TCP"}],
        },
    }


def endpoint(spec: ModelServiceSpec, owner: Owner) -> str:
    return f"http://{api_service_name(owner)}.{owner.namespace}.svc:{spec.service.port}"
