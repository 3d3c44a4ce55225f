"""Fathom's Prometheus metrics, each defined once (names fixed by docs/architecture.md).

Every process records into its own ``FathomMetrics`` (a private ``CollectorRegistry``): the
ingress records request counts, latency, tokens and cost; a model replica records its engine
gauges, TTFT/TPOT/queue time and prefix-cache counters. ``fathom.telemetry.hub`` ships each
process's registry snapshot to one aggregating actor that ``GET /metrics`` renders, so any
ingress replica answers a scrape with the whole app's numbers (see that module for why).

When ``OTEL_METRICS_EXPORTER`` selects ``otlp`` (protocol from ``OTEL_EXPORTER_OTLP_[METRICS_]
PROTOCOL``), the same observations are also sent as OTLP metrics with the same names, each
process pushing its own series (OTLP is push-based: no aggregation needed).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:  # annotation only: importing this module never loads the engine
    from fathom.engine.outputs import EngineStats

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REPLICA = ("model", "replica")
INGRESS_REPLICA = "ingress"  # the `replica` label of requests the ingress holds for lack of a model replica
TENANT = ("model", "tenant")
POSITION = ("model", "replica", "position")
# name -> (kind, documentation, labels, buckets); the single definition of every metric.
METRICS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "fathom_requests_total": (
        "counter",
        "Requests answered, by HTTP status.",
        ("model", "tenant", "status"),
        None,
    ),
    "fathom_requests_running": ("gauge", "Sequences in the running batch.", REPLICA, None),
    "fathom_requests_waiting": ("gauge", "Sequences waiting to be scheduled.", REPLICA, None),
    "fathom_model_replicas": ("gauge", "Model replicas running (Serve), as an ingress sees them.", REPLICA, None),
    "fathom_model_replicas_desired": (
        "gauge",
        "Model replicas asked for (the model deployment's target: the operator's or --num-replicas).",
        REPLICA,
        None,
    ),
    "fathom_kv_cache_usage_ratio": ("gauge", "Fraction of KV-cache blocks in use (0..1).", REPLICA, None),
    "fathom_kv_cache_blocks_used": ("gauge", "KV-cache blocks in use.", REPLICA, None),
    "fathom_kv_cache_blocks_total": ("gauge", "KV-cache blocks in the pool.", REPLICA, None),
    "fathom_prefix_cache_queried_tokens_total": (
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        REPLICA,
        None,
    ),
    "fathom_moe_expert_tokens_total": (
        "counter",
        "Routed (token, choice) pairs per logical expert, summed over MoE layers (EPLB, W > 1).",
        (*REPLICA, "expert"),
        None,
    ),
    "fathom_moe_imbalance_ratio": (
        "gauge",
        "Max / mean routed tokens per expert shard in the last EPLB window, worst MoE layer.",
        REPLICA,
        None,
    ),
    "fathom_prefix_cache_hit_tokens_total": (
        "counter",
        "Prompt tokens found in the prefix cache.",
        REPLICA,
        None,
    ),
    "fathom_spec_decode_num_drafts_total": (
        "counter",
        "Speculative decoding: verifications of a sequence's drafts (one per decoding sequence and step).",
        REPLICA,
        None,
    ),
    "fathom_spec_decode_num_draft_tokens_total": ("counter", "Speculative decoding: draft tokens verified.", REPLICA, None),
    "fathom_spec_decode_num_accepted_tokens_total": (
        "counter",
        "Speculative decoding: draft tokens accepted.",
        REPLICA,
        None,
    ),
    "fathom_spec_decode_num_accepted_tokens_per_pos_total": (
        "counter",
        "Speculative decoding: verifications whose draft at `position` (0 = the first) was accepted.",
        POSITION,
        None,
    ),
    "fathom_spec_decode_acceptance_rate": (
        "gauge",
        "Speculative decoding: share of verifications whose draft at `position` was accepted, since start (0..1).",
        POSITION,
        None,
    ),
    "fathom_time_to_first_token_seconds": (
        "histogram",
        "Arrival to first output token.",
        ("model",),
        TTFT_BUCKETS,
    ),
    "fathom_time_per_output_token_seconds": (
        "histogram",
        "Mean time between output tokens of a request.",
        ("model",),
        TPOT_BUCKETS,
    ),
    "fathom_e2e_request_latency_seconds": (
        "histogram",
        "Arrival to last byte of successful requests.",
        ("model",),
        E2E_BUCKETS,
    ),
    "fathom_queue_time_seconds": (
        "histogram",
        "Arrival to first scheduled in the engine.",
        ("model",),
        QUEUE_BUCKETS,
    ),
    "fathom_prompt_tokens_total": ("counter", "Prompt tokens processed.", TENANT, None),
    "fathom_cached_prompt_tokens_total": (
        "counter",
        "Prompt tokens served from the prefix cache.",
        TENANT,
        None,
    ),
    "fathom_generation_tokens_total": ("counter", "Completion tokens generated.", TENANT, None),
    "fathom_cost_total": (
        "counter",
        "Cost of usage at the model's pricing, in the operator's currency.",
        TENANT,
        None,
    ),
}

_PROM_TYPES = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class FathomMetrics:
    """This process's metrics; the recording methods are what the hooks call."""

    def __init__(self, registry: CollectorRegistry | None = None, otlp: bool | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.prom = {}
        for name, (kind, doc, labels, buckets) in METRICS.items():
            kwargs = {"buckets": buckets} if buckets else {}
            prom_name = name[: -len("_total")] if kind == "counter" else name
            self.prom[name] = _PROM_TYPES[kind](prom_name, doc, labels, registry=self.registry, **kwargs)
        self._otel = _OtelMirror.from_env() if otlp is None else (_OtelMirror() if otlp else None)
        self._seen: dict[tuple[str, ...], int] = {}  # last cumulative engine counter per series
        self._lock = threading.Lock()

    def _inc(self, name: str, value: float, **labels: str) -> None:
        if value:
            self.prom[name].labels(**labels).inc(value)
            if self._otel:
                self._otel.add(name, value, labels)

    def _set(self, name: str, value: float, **labels: str) -> None:
        self.prom[name].labels(**labels).set(value)
        if self._otel:
            self._otel.set(name, value, labels)

    def _observe(self, name: str, value: float, **labels: str) -> None:
        self.prom[name].labels(**labels).observe(value)
        if self._otel:
            self._otel.record(name, value, labels)

    def request_finished(
        self, model: str, tenant: str, status: int, e2e_seconds: float | None = None
    ) -> None:
        """One HTTP request answered (any status); latency is kept for successes only."""
        self._inc("fathom_requests_total", 1, model=model, tenant=tenant, status=str(status))
        if e2e_seconds is not None and status < 400:
            self._observe("fathom_e2e_request_latency_seconds", e2e_seconds, model=model)

    def e2e_latency(self, model: str, seconds: float) -> None:
        """Arrival to last byte of one successful request."""
        self._observe("fathom_e2e_request_latency_seconds", seconds, model=model)

    def request_timing(
        self,
        model: str,
        *,
        ttft: float | None = None,
        tpot: float | None = None,
        queue_time: float | None = None,
    ) -> None:
        """Per-request engine timings, recorded by the replica when a request ends."""
        for name, value in (
            ("fathom_time_to_first_token_seconds", ttft),
            ("fathom_time_per_output_token_seconds", tpot),
            ("fathom_queue_time_seconds", queue_time),
        ):
            if value is not None:
                self._observe(name, value, model=model)

    def usage(
        self,
        model: str,
        tenant: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cost: float = 0.0,
    ) -> None:
        """Tokens and cost of one request, by tenant (metering)."""
        self._inc("fathom_prompt_tokens_total", prompt_tokens, model=model, tenant=tenant)
        self._inc("fathom_cached_prompt_tokens_total", cached_tokens, model=model, tenant=tenant)
        self._inc("fathom_generation_tokens_total", completion_tokens, model=model, tenant=tenant)
        self._inc("fathom_cost_total", cost, model=model, tenant=tenant)

    def ingress_waiting(self, model: str, held: int) -> None:
        """Requests this ingress holds because no model replica runs: `fathom_requests_waiting`
        with `replica="ingress"` (summed over ingress processes by the hub). The autoscaler wakes
        a ModelService at zero replicas on it: there is no engine yet to report a queue."""
        self._set("fathom_requests_waiting", held, model=model, replica=INGRESS_REPLICA)

    def model_replicas(self, model: str, ingress: str, running: int, desired: int) -> None:
        """The model deployment's running and desired replicas, from one ingress (`replica` label:
        that ingress; dashboards take the max over ingresses)."""
        self._set("fathom_model_replicas", running, model=model, replica=ingress)
        self._set("fathom_model_replicas_desired", desired, model=model, replica=ingress)

    def engine_stats(self, model: str, replica: str, stats: EngineStats) -> None:
        """A replica's gauges, and its cumulative prefix-cache counters turned into increments."""
        labels = {"model": model, "replica": replica}
        used, total = stats.kv_blocks_used, stats.kv_blocks_total
        self._set("fathom_requests_running", stats.num_running, **labels)
        self._set("fathom_requests_waiting", stats.num_waiting, **labels)
        self._set("fathom_kv_cache_blocks_used", used, **labels)
        self._set("fathom_kv_cache_blocks_total", total, **labels)
        self._set("fathom_kv_cache_usage_ratio", used / total if total else 0.0, **labels)
        self._count_on("fathom_prefix_cache_queried_tokens_total", stats.prefix_cache_queried_tokens, labels)
        self._count_on("fathom_prefix_cache_hit_tokens_total", stats.prefix_cache_hit_tokens, labels)
        if stats.spec_decode is not None:
            self._spec_decode(stats.spec_decode, labels)
        if stats.moe_expert_tokens is not None:  # EPLB's cumulative per-expert counts
            for e, tokens in enumerate(stats.moe_expert_tokens):
                self._count_on("fathom_moe_expert_tokens_total", tokens, {**labels, "expert": str(e)})
            self._set("fathom_moe_imbalance_ratio", stats.moe_imbalance, **labels)

    def _spec_decode(self, spec, labels: dict[str, str]) -> None:
        """Speculative decoding's cumulative counters (``fathom.engine.outputs.SpecDecodeStats``)."""
        self._count_on("fathom_spec_decode_num_drafts_total", spec.num_drafts, labels)
        self._count_on("fathom_spec_decode_num_draft_tokens_total", spec.num_draft_tokens, labels)
        self._count_on("fathom_spec_decode_num_accepted_tokens_total", spec.num_accepted_tokens, labels)
        for i, accepted in enumerate(spec.accepted_per_position):
            at = {**labels, "position": str(i)}
            self._count_on("fathom_spec_decode_num_accepted_tokens_per_pos_total", accepted, at)
            self._set("fathom_spec_decode_acceptance_rate", accepted / spec.num_drafts if spec.num_drafts else 0.0, **at)

    def _count_on(self, name: str, cumulative: int, labels: dict[str, str]) -> None:
        """Increment counter ``name`` by what an engine's cumulative count gained since last seen.
        A restarted engine starts its counters at 0 again: count on from there."""
        key = (name, *labels.values())
        with self._lock:
            last = self._seen.get(key, 0)
            self._seen[key] = cumulative
        self._inc(name, cumulative - last if cumulative >= last else cumulative, **labels)


class _OtelMirror:
    """The same instruments on an OTel MeterProvider exporting OTLP (only when configured)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(_otlp_metric_exporter())
        self.provider = MeterProvider(metric_readers=[reader], resource=_resource())
        meter = self.provider.get_meter("fathom")
        self.instruments = {}
        for name, (kind, doc, _, buckets) in METRICS.items():
            if kind == "counter":
                self.instruments[name] = meter.create_counter(name, description=doc)
            elif kind == "gauge":
                self.instruments[name] = meter.create_gauge(name, description=doc)
            else:
                self.instruments[name] = meter.create_histogram(
                    name, unit="s", description=doc, explicit_bucket_boundaries_advisory=list(buckets)
                )

    @classmethod
    def from_env(cls) -> _OtelMirror | None:
        names = [n.strip() for n in os.environ.get("OTEL_METRICS_EXPORTER", "").split(",")]
        return cls() if "otlp" in names else None

    def add(self, name: str, value: float, labels: dict) -> None:
        self.instruments[name].add(value, labels)

    def set(self, name: str, value: float, labels: dict) -> None:
        self.instruments[name].set(value, labels)

    def record(self, name: str, value: float, labels: dict) -> None:
        self.instruments[name].record(value, labels)


def _otlp_metric_exporter():
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    else:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf"
        )
    return OTLPMetricExporter()


def _resource():
    from fathom.telemetry.tracing import build_resource, component

    return build_resource(component() or "process", dict(os.environ))


_process_metrics: FathomMetrics | None = None
_process_lock = threading.Lock()


def process_metrics() -> FathomMetrics:
    """This process's ``FathomMetrics`` (created on first use)."""
    global _process_metrics
    with _process_lock:
        if _process_metrics is None:
            _process_metrics = FathomMetrics()
        return _process_metrics
