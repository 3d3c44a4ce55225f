"""The `ModelService` custom resource (fathom.dev/v1alpha1): what to serve and how to scale it.

The spec embeds `EngineSettings` unchanged (one vocabulary with `fathom serve` flags and the
`--config` file): parallelism is `spec.engine.tensorParallelSize` / `expertParallelSize`, batching
and KV-cache limits are the engine's own fields. What the CRD adds is what only Kubernetes needs:
where the checkpoint lives, per-rank resources, replica count or autoscaling, and API exposure.
The operator's CRD manifest is generated from these models (`fathom.api.crd`).
"""

import hashlib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fathom.api.base import Spec
from fathom.api.engine import EngineSettings
from fathom.api.memory_plan import ModelShape

GROUP = "fathom.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MODEL_MOUNT_PATH = "/models"
DEFAULT_IMAGE = "ghcr.io/fathom-serve/fathom:0.1.0"

Quantity = int | str  # Kubernetes resource quantity: 8, "500m", "64Gi"


class PersistentVolumeClaimSource(Spec):
    """A PersistentVolumeClaim holding checkpoints, mounted read-only at /models."""

    claim_name: str = Field(..., min_length=1, description="Name of the PersistentVolumeClaim in the ModelService's namespace.")
    read_only: bool = Field(True, description="Mount the claim read-only.")


class ModelCache(Spec):
    """Where a `uri` checkpoint is kept so that pod starts do not download it again.

    - `None`: every worker pod downloads the whole checkpoint into its own emptyDir.
    - `Node`: a directory on each node (`hostPath`, writable by uid 1000); the first pod on a node
      downloads into it (under a lock), later pods and restarts on that node read it. Pods fall
      back to their own emptyDir when the directory is not writable. Needs a namespace that
      allows hostPath volumes (Pod Security `privileged`).
    - `Shared`: a PersistentVolumeClaim (ReadWriteMany) filled once by a Job; worker pods mount
      it read-only and wait for it, and each rank reads only its slices.
    The head only ever fetches the tokenizer files.
    """

    type: Literal["None", "Node", "Shared"] = Field("None", description="None, Node (a directory on each node) or Shared (a ReadWriteMany PVC filled by a Job).")
    host_path: str = Field("/var/cache/fathom/models", pattern=r"^/", description="Node: the directory on each node.")
    claim_name: str | None = Field(None, description="Shared: an existing ReadWriteMany claim to use; unset: the operator creates <name>-model-cache.")
    storage_class_name: str | None = Field(None, description="Shared: storage class of the claim the operator creates (ReadWriteMany); unset: the cluster default.")
    size: Quantity = Field("1Ti", description="Shared: size of the claim the operator creates.")


class ModelSource(Spec):
    """Where the checkpoint comes from: exactly one of `pvc`, `hostPath` or `uri`.

    A volume (`pvc` or `hostPath`) is mounted at /models and the checkpoint is `/models/<path>`.
    A `uri` is fetched by an init container into an emptyDir at /models before Ray starts:
    `hf://org/name[@revision]` (Hugging Face Hub), `s3://bucket/prefix`, `gs://bucket/prefix`,
    or `http(s)://…/checkpoint.tar[.gz]`.
    """

    pvc: PersistentVolumeClaimSource | None = Field(None, description="Checkpoint on a PersistentVolumeClaim.")
    host_path: str | None = Field(None, description="Checkpoint on a node directory (hostPath volume), e.g. /mnt/models.")
    uri: str | None = Field(None, pattern=r"^(hf|s3|gs|https?)://.+", description="Checkpoint fetched by an init container: hf://, s3://, gs://, http(s):// (a tarball).")
    path: str = Field("", pattern=r"^[^/].*$|^$", description="Checkpoint directory relative to the volume root (or to the fetched tree); empty = the root.")
    fetch_image: str | None = Field(None, description="Image of the fetch init container (needs huggingface_hub, awscli, gsutil or curl for the scheme); default: spec.image.")
    architecture: ModelShape | None = Field(None, description="The checkpoint's config.json numbers (same names, camelCase). With resources.gpuType or gpuMemory the operator checks that the model fits the ranks' GPUs (condition ModelFits) before creating any pod; `fathom plan` prints the same numbers.")
    cache: ModelCache = Field(default_factory=ModelCache, description="Where a uri checkpoint is kept between pod starts.")

    @field_validator("path")
    @classmethod
    def _inside_the_volume(cls, v: str) -> str:
        if ".." in v.split("/"):
            raise ValueError(f"path {v!r} must stay inside the volume (no '..')")
        return v

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSource":
        given = [name for name in ("pvc", "host_path", "uri") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"spec.model needs exactly one of pvc, hostPath, uri (got {given or 'none'})")
        if self.cache.type != "None" and self.uri is None:
            raise ValueError("spec.model.cache is for a uri source (a pvc or hostPath is read in place)")
        return self

    @property
    def cached(self) -> bool:
        return self.uri is not None and self.cache.type != "None"

    @property
    def cache_key(self) -> str:
        """Directory name of this checkpoint in a cache: a digest of the uri."""
        return hashlib.sha256((self.uri or "").encode()).hexdigest()[:16]

    @property
    def root(self) -> str:
        """Where the source's tree is inside the Ray pods (a cached uri: its own directory)."""
        return f"{MODEL_MOUNT_PATH}/{self.cache_key}" if self.cached else MODEL_MOUNT_PATH

    @property
    def checkpoint_dir(self) -> str:
        """The checkpoint directory as seen inside the Ray pods."""
        return f"{self.root}/{self.path}".rstrip("/") if self.path else self.root


class Toleration(Spec):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(None, description="Taint key; empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: str | None = Field(None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect to tolerate; empty = all.")
    toleration_seconds: int | None = Field(None, description="For NoExecute: how long the pod stays bound after the taint appears.")


class RankResources(Spec):
    """Resources of one rank (one tensor-parallel worker) and where its pods may run.

    Ranks of one model instance are packed onto as few worker pods as possible: a worker pod
    (one node) holds `gpusPerNode // gpus` ranks, so an instance of W ranks spans
    ceil(W / ranks-per-pod) pods. CPU-only ranks (`gpus: 0`) put a whole instance in one pod.
    """

    gpus: int = Field(1, ge=0, le=16, description="GPUs per rank (nvidia.com/gpu); 0 runs on CPU.")
    cpu: Quantity = Field(8, description="CPU request per rank (Kubernetes quantity).")
    memory: Quantity = Field("64Gi", description="Memory request per rank (Kubernetes quantity).")
    gpus_per_node: int = Field(8, ge=1, le=64, description="GPUs of one worker pod (one node): how many ranks share a pod.")
    gpu_resource_name: str = Field("nvidia.com/gpu", description="Extended resource name of the accelerator.")
    gpu_type: Literal["h100", "h200", "h20", "a100", "b200"] | None = Field(None, description="GPU kind of the worker nodes; its memory (as the driver reports it) lets the operator check the model fits (with spec.model.architecture).")
    gpu_memory: Quantity | None = Field(None, description="Memory of one GPU (e.g. 141Gi); overrides gpuType's.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the worker pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of the worker pods.")

    @model_validator(mode="after")
    def _a_rank_fits_a_node(self) -> "RankResources":
        if self.gpus > self.gpus_per_node:
            raise ValueError(f"resources.gpus ({self.gpus}) exceeds resources.gpusPerNode ({self.gpus_per_node})")
        return self


class HeadResources(Spec):
    """The Ray head pod: Serve controller, HTTP proxy and the Fathom ingress; never a GPU."""

    cpu: Quantity = Field(4, description="CPU request of the head pod.")
    memory: Quantity = Field("8Gi", description="Memory request of the head pod.")


class AutoscalingTargets(Spec):
    """Per-replica load targets; the replica count is the largest any target asks for.

    A count is asked for as in the Kubernetes HPA: ceil(replicas × observed / target) for
    ratios (KV cache, TTFT) and ceil(total / target) for per-replica amounts. A target set to 0
    (or unset) is off: with the API server filling in defaults, 0 is how a default is turned off.
    """

    waiting_requests_per_replica: float | None = Field(2.0, ge=0, description="Queued (not yet running) requests per replica (fathom_requests_waiting); 0 = off.")
    running_requests_per_replica: float | None = Field(None, ge=0, description="Running requests per replica (fathom_requests_running); 0 or unset = off.")
    kv_cache_utilization: float | None = Field(0.5, ge=0, le=1, description="Mean KV cache usage ratio over replicas (fathom_kv_cache_usage_ratio); 0 = off. The default 0.5 leaves room for a 2x burst during a replica's cold start.")
    ttft_p95_seconds: float | None = Field(None, ge=0, description="p95 time to first token over the last interval (fathom_time_to_first_token_seconds); 0 or unset = off.")
    tokens_per_second_per_replica: float | None = Field(None, ge=0, description="Generated tokens per second per replica (fathom_generation_tokens_total); 0 or unset = off.")


class Autoscaling(Spec):
    """Load-driven replica count, decided by the operator from the app's Prometheus metrics.

    Scale-up takes the smallest count asked for over `scaleUpStabilizationSeconds` (0 = at once);
    scale-down the largest over `scaleDownStabilizationSeconds`. With `minReplicas: 0` the
    service goes to zero after `scaleToZeroAfterSeconds` without requests, and back to one as
    soon as the ingress (which stays up on the Ray head) reports a request it holds; that request
    waits up to `coldStartTimeoutSeconds` for the replica.
    """

    enabled: bool = Field(True, description="Off: the replica count is spec.replicas (kubectl scale, HPA or KEDA via /scale).")
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero after the idle period.")
    max_replicas: int = Field(4, ge=1, description="Most replicas.")
    targets: AutoscalingTargets = Field(default_factory=AutoscalingTargets, description="Load targets per replica.")
    interval_seconds: float = Field(15.0, gt=0, description="How often the metrics are read and the count decided.")
    scale_up_stabilization_seconds: float = Field(0.0, ge=0, description="Window over which scale-up takes the smallest recommendation.")
    scale_down_stabilization_seconds: float = Field(300.0, ge=0, description="Window over which scale-down takes the largest recommendation.")
    scale_to_zero_after_seconds: float = Field(900.0, ge=0, description="Idle time (no running or waiting requests) before scaling to zero when minReplicas is 0.")
    cold_start_timeout_seconds: float = Field(600.0, ge=0, description="How long a request that arrives while no model replica runs (scaled to zero, starting) waits at the ingress before 503 + Retry-After.")

    @model_validator(mode="after")
    def _min_le_max(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) exceeds maxReplicas ({self.max_replicas})")
        return self


class ServiceExposure(Spec):
    """The Kubernetes Service in front of the OpenAI-compatible API."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type.")
    port: int = Field(8000, ge=1, le=65535, description="Service port of the API.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of the Service (e.g. for a cloud load balancer).")


class SecretKeySelector(Spec):
    """A key of a Secret in the ModelService's namespace."""

    name: str = Field(..., min_length=1, description="Name of the Secret.")
    key: str = Field(..., min_length=1, description="Key in the Secret.")


class FaultTolerance(Spec):
    """State that outlives the Ray head and the Ray cluster, on an external Redis.

    The Ray head runs with GCS fault tolerance on it (KubeRay's `gcsFaultToleranceOptions`: Serve's
    and the tenancy actor's state survive a head restart, serving workers keep running), and the
    usage ledger's store of record is it (usage and budgets survive a NewCluster upgrade too).
    """

    redis_address: str = Field(..., pattern=r"^[^\s/:@]+:\d{1,5}$", description="host:port of the Redis (e.g. the chart's fathom-redis.<namespace>.svc:6379).")
    redis_password_secret: SecretKeySelector | None = Field(None, description="Secret key holding the Redis password; unset for a Redis without auth.")
    usage_ledger: bool = Field(True, description="Keep the usage ledger in this Redis (survives NewCluster upgrades); off: only in the GCS.")


class Upgrade(Spec):
    """How a spec change that needs new pods rolls out.

    Changes of the Serve config alone (engine settings, scaling, cold-start bound) never need new
    pods: KubeRay applies them to the running cluster in place, whatever the strategy. Changes of
    the pods (image, resources, env, model source, parallelism) need a new Ray cluster:
    - `NewCluster` (default, zero downtime, any KubeRay >= 1.1): KubeRay starts a complete second
      cluster and switches traffic once it serves, so the rollout needs twice the GPUs.
    - `Incremental`: KubeRay's NewClusterWithIncrementalUpgrade (KubeRay >= 1.5.1 with the
      RayServiceIncrementalUpgrade feature gate, Gateway API and a GatewayClass): the new cluster
      grows by `maxSurgePercent` of the capacity while traffic moves `stepSizePercent` every
      `intervalSeconds` and the old one shrinks, so it needs only the surge in extra GPUs. When the
      installed RayService CRD has no incremental upgrade, the operator keeps NewCluster and says
      so (status.upgradeStrategy, a Warning Event).
    """

    strategy: Literal["NewCluster", "Incremental"] = Field("NewCluster", description="NewCluster (blue-green, 2x GPUs during a rollout) or Incremental (KubeRay's incremental upgrade, surge only).")
    gateway_class_name: str | None = Field(None, description="Incremental: the GatewayClass KubeRay creates the Gateway and HTTPRoute with.")
    max_surge_percent: int = Field(25, ge=1, le=100, description="Incremental: capacity added to the new cluster per step, in percent.")
    step_size_percent: int = Field(10, ge=1, le=100, description="Incremental: traffic moved to the new cluster per interval, in percent (at most maxSurgePercent).")
    interval_seconds: int = Field(60, ge=1, description="Incremental: seconds between traffic steps.")

    @model_validator(mode="after")
    def _incremental_is_complete(self) -> "Upgrade":
        if self.strategy == "Incremental" and not self.gateway_class_name:
            raise ValueError("upgrade.strategy Incremental needs upgrade.gatewayClassName")
        if self.step_size_percent > self.max_surge_percent:
            raise ValueError(f"upgrade.stepSizePercent ({self.step_size_percent}) exceeds maxSurgePercent ({self.max_surge_percent})")
        return self


class InferencePool(Spec):
    """An InferencePool (Gateway API Inference Extension, inference.networking.k8s.io/v1) over the
    ModelService's Serve pods, so gateways that speak it route to Fathom. Created only when the
    cluster serves that CRD; otherwise a Warning Event says why not."""

    enabled: bool = Field(False, description="Create the InferencePool <name> selecting the Serve pods, target port 8000.")
    endpoint_picker: str | None = Field(None, description="Service of the endpoint picker (EPP) the gateway consults; unset: none.")
    endpoint_picker_port: int = Field(9002, ge=1, le=65535, description="Port of the endpoint picker Service.")
    failure_mode: Literal["FailOpen", "FailClose"] = Field("FailClose", description="What the gateway does when the endpoint picker does not answer.")


class MetricsExport(Spec):
    """What `/metrics` of the ModelService exports besides Fathom's own names."""

    vllm_aliases: bool = Field(False, description="Also export the metrics under vLLM's names (vllm:num_requests_waiting, vllm:kv_cache_usage_perc, vllm:time_to_first_token_seconds, ...; label model_name), so autoscalers and dashboards built for vLLM work unchanged.")


class ModelServiceSpec(Spec):
    """What to serve (`model`, `engine`), on what (`resources`, `image`) and how many (`replicas`, `autoscaling`)."""

    model: ModelSource | None = Field(None, description="Where the checkpoint comes from; unset serves the built-in demo model (a small trained DeepSeek-V3 checkpoint shipped in the image).")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Engine settings of each instance (the `fathom serve` vocabulary); engine.model is set from spec.model.")
    image: str = Field(DEFAULT_IMAGE, description="Container image with Fathom and Ray for the head and workers.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Image pull policy.")
    resources: RankResources = Field(default_factory=RankResources, description="Per-rank resources and placement.")
    head: HeadResources = Field(default_factory=HeadResources, description="Resources of the Ray head (CPU only).")
    replicas: int = Field(1, ge=0, description="Model instances when autoscaling is off (kubectl scale, HPA and KEDA write it through /scale); with autoscaling on, only the starting count.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Load-driven replica count.")
    service: ServiceExposure = Field(default_factory=ServiceExposure, description="How the API is exposed.")
    tenants_secret: str = Field("fathom-tenants", description="Secret (written by the operator from Tenant objects) that the ingress reads; optional.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for every Ray container (e.g. OTEL_EXPORTER_OTLP_ENDPOINT).")
    metrics: MetricsExport = Field(default_factory=MetricsExport, description="Metric names exported on /metrics.")
    upgrade: Upgrade = Field(default_factory=Upgrade, description="How changes that need new pods roll out.")
    inference_pool: InferencePool = Field(default_factory=InferencePool, description="An InferencePool for gateways of the Gateway API Inference Extension.")
    fault_tolerance: FaultTolerance | None = Field(None, description="GCS fault tolerance and a durable usage ledger on an external Redis; unset: state lives in the Ray cluster only.")
    termination_grace_period_seconds: int = Field(90, ge=10, le=3600, description="Grace period of the Ray pods; their preStop hook drains (head: finish in-flight requests; workers: move model replicas off the node) for up to this minus 10 s.")

    @field_validator("env")
    @classmethod
    def _no_ray_auth(cls, env: dict[str, str]) -> dict[str, str]:
        set_by_operator = sorted({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env))
        if set_by_operator:
            raise ValueError(f"{', '.join(set_by_operator)}: set by the operator (Ray token auth from the "
                             "ModelService's auth Secret); remove it from spec.env")
        return env

    @model_validator(mode="after")
    def _consistent(self) -> "ModelServiceSpec":
        if self.engine.model is not None:
            raise ValueError("spec.engine.model is set by the operator from spec.model; remove it")
        return self

    @property
    def ranks_per_instance(self) -> int:
        """World size W of one instance (TP x DP ranks; EP subdivides them)."""
        return self.engine.world_size

    @property
    def ranks_per_pod(self) -> int:
        """Ranks sharing one worker pod (a node's GPUs); a whole instance if on CPU."""
        if self.resources.gpus == 0:
            return self.ranks_per_instance
        return max(1, min(self.ranks_per_instance, self.resources.gpus_per_node // self.resources.gpus))

    @property
    def pods_per_instance(self) -> int:
        return -(-self.ranks_per_instance // self.ranks_per_pod)


ConditionType = Literal["Ready", "Progressing", "Degraded", "ModelFits"]


class Condition(Spec):
    """A status condition as in Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(..., description="Ready, Progressing or Degraded; a ModelService also has ModelFits when its fit can be planned.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(..., description="RFC 3339 time the status last changed.")
    observed_generation: int | None = Field(None, description="metadata.generation the condition was set for.")


Phase = Literal["Pending", "Deploying", "Ready", "ScaledToZero", "Degraded", "Invalid"]


class ModelServiceStatus(Spec):
    """Observed state, written by the operator only."""

    phase: Phase | None = Field(None, description="Pending, Deploying, Ready, ScaledToZero, Degraded or Invalid.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing and Degraded conditions, and ModelFits when the model's fit can be planned.")
    observed_generation: int | None = Field(None, description="metadata.generation last reconciled.")
    replicas: int | None = Field(None, description="Model instances configured in the RayService (the /scale status).")
    ready_replicas: int | None = Field(None, description="Model instances whose workers are ready and Serve app running.")
    desired_replicas: int | None = Field(None, description="Model instances the autoscaler (or spec.replicas) asks for.")
    last_scale_time: str | None = Field(None, description="RFC 3339 time of the last change of desiredReplicas.")
    endpoint: str | None = Field(None, description="In-cluster base URL of the OpenAI-compatible API.")
    selector: str | None = Field(None, description="Label selector of the model worker pods (for the /scale subresource).")
    ray_service: str | None = Field(None, description="Name of the owned RayService.")
    upgrade_strategy: str | None = Field(None, description="The KubeRay upgrade strategy in effect (NewCluster or NewClusterWithIncrementalUpgrade).")
