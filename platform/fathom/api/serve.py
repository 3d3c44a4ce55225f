"""Serve-level settings: one model behind an HTTP API. The same fields are `fathom serve`
flags (kebab-case), `--config FILE` (YAML, camelCase or snake_case) and the Serve app config.

`engine` embeds the per-instance `EngineSettings`; everything else here is about the
server around it: where it listens, how many model instances, how much it queues.
"""

from pydantic import Field, model_validator

from fathom.api.base import Spec
from fathom.api.engine import EngineSettings

# Ray Serve's own throughput settings, for every Ray process of a Fathom app: the ones
# `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` turns on, less direct ingress (an extra HTTP port per
# ingress replica, from 30000 up, instead of `host:port` through the proxy) and silent replica
# logs. `fathom serve` sets them in each deployment's runtime_env and in the environment of a
# Ray instance it starts; the operator sets them on the Ray containers (spec.env wins there).
# See fathom.serve.ray_tuning and benchmarks/serving_overhead.py for what they buy.
RAY_SERVE_THROUGHPUT_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",  # calls between deployments over gRPC, not actor tasks
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",  # one event loop per replica: no cross-loop hop per item
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",  # the handle's router on that loop too
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",  # access log lines buffered (errors flush at once)
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",  # objects alive after start-up are not scanned by the GC again
    # A request crosses from the ingress to a model replica as one gRPC message; gRPC's 4 MiB
    # default would turn a body under max_request_body_bytes into a 500. Room for the largest.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(160 * 1024 * 1024),
}
MAX_REQUEST_BODY_BYTES = 64 * 1024 * 1024  # RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH holds a request this big


class ServeSettings(Spec):
    """One served model: its engine settings plus the HTTP server and Ray Serve around it."""

    engine: EngineSettings = Field(default_factory=EngineSettings, description="Settings of each model instance.")
    host: str = Field("127.0.0.1", description="Interface the HTTP API binds: loopback unless you opt in (0.0.0.0).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port of the API (0 picks a free one).")
    num_replicas: int = Field(1, ge=1, le=4096, description="Independent model instances (Ray Serve replicas of the model deployment).")
    address: str | None = Field(None, description="Ray cluster to join (`auto`, `ray://head:10001`); unset: a local one.")
    max_ongoing_requests: int = Field(256, ge=1, le=1_000_000, description="Requests a replica serves at once (running + waiting).")
    max_queued_requests: int = Field(
        256, ge=1, le=1_000_000, description="Requests queued per ingress before the API answers 429."
    )
    max_request_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=MAX_REQUEST_BODY_BYTES, description="Largest HTTP request body; larger ones get 413 unread."
    )
    body_read_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds a request body may take to arrive (else 408)."
    )
    graceful_shutdown_timeout_s: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get after SIGTERM or Ctrl-C."
    )
    stream_chunks_per_s: float = Field(
        100.0, gt=0, description=(
            "Chunks/s a replica aims at over its streams (beyond: tokens per chunk)."
        ),
    )
    cold_start_timeout_s: float = Field(
        300.0, ge=0, description="Seconds a request waits for a first replica, then 503.",
    )
    vllm_metric_aliases: bool = Field(
        False, description="Also export metrics under vLLM's names.",
    )
    usage_store: str | None = Field(
        None, pattern=r"^rediss?://[^@/]+(/\d+)?$",
        description="Redis (redis://host:port[/db]) holding the usage ledger; unset: Ray's GCS.",
    )
    usage_key: str = Field("fathom", min_length=1, description="Key prefix of the ledger in usage_store.")
    tenants: str | None = Field(None, description="YAML file of Tenant manifests (keys, limits, weights), reloaded on change.")
    api_key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$",
        description="SHA-256 hex digest of the one API key (what --api-key sets).",
    )
    metrics_key_file: str | None = Field(
        None, json_schema_extra={"flag": False},
        description=("File of SHA-256 digests (one a line) of keys that may read /metrics besides admin tenants' "
                     "(the operator's scrape key, mounted from its Secret); reloaded on change. Not a flag."),
    )
    log_requests: bool = Field(False, description="Log one line per request at the ingress.")

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> "ServeSettings":
        if self.api_key_sha256 is not None and self.tenants is not None:
            raise ValueError("an API key (--api-key) and tenants (--tenants) exclude each other: give the key to a Tenant instead")
        return self

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> "ServeSettings":
        if self.max_ongoing_requests < self.engine.max_num_seqs:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least "
                f"engine.max_num_seqs ({self.engine.max_num_seqs}) or the engine never fills a batch"
            )
        return self

    @property
    def model_name(self) -> str:
        """The id in /v1/models: served_model_name (`fathom serve` sets a hub id here), else the checkpoint
        directory name, else `fathom-demo`."""
        if self.engine.served_model_name:
            return self.engine.served_model_name
        if self.engine.model:
            return self.engine.model.rstrip("/").rsplit("/", 1)[-1] or self.engine.model
        return "fathom-demo"
