"""Merging the metrics of many processes into one Prometheus exposition (pure, no Ray).

A *snapshot* is a process registry's samples as plain data (picklable). The aggregator keeps
the latest snapshot of each source (one source = one process) and renders their sum:

- counters and histograms add up across sources; a source that stops reporting keeps its
  last totals (a dead replica's requests still happened, so the fleet's counters never go
  backwards, which ``rate()`` would read as a reset);
- gauges are per-replica state: they add up across live sources only, and a source's gauges
  disappear once it is silent for ``stale_after`` seconds (a replica scaled down is gone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Metric, generate_latest

from fathom.telemetry.vllm_aliases import aliased

# (sample name, sorted label items) -> value
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class FamilySnapshot:
    name: str
    kind: str  # counter | gauge | histogram
    documentation: str
    samples: tuple[tuple[str, tuple[tuple[str, str], ...], float], ...]


def snapshot(registry: CollectorRegistry) -> list[FamilySnapshot]:
    """The registry's current samples (``_created`` timestamps dropped: they do not add up)."""
    out = []
    for metric in registry.collect():
        samples = tuple(
            (s.name, tuple(sorted(s.labels.items())), float(s.value))
            for s in metric.samples
            if not s.name.endswith("_created")
        )
        out.append(FamilySnapshot(metric.name, metric.type, metric.documentation, samples))
    return out


@dataclass
class _Source:
    families: list[FamilySnapshot]
    seen: float


@dataclass
class MetricsAggregator:
    """Latest snapshot per source; ``render()`` is the fleet-wide Prometheus text."""

    stale_after: float = 30.0
    sources: dict[str, _Source] = field(default_factory=dict)

    def update(self, source: str, families: list[FamilySnapshot], now: float | None = None) -> None:
        self.sources[source] = _Source(list(families), time.monotonic() if now is None else now)

    def forget(self, source: str) -> None:
        """Drop a source's gauges now (it shut down cleanly); its counters are kept."""
        if source in self.sources:
            self.sources[source].seen = float("-inf")

    def merged(self, now: float | None = None) -> dict[str, tuple[str, str, dict[SampleKey, float]]]:
        """name -> (kind, documentation, summed samples), in first-seen order."""
        now = time.monotonic() if now is None else now
        out: dict[str, tuple[str, str, dict[SampleKey, float]]] = {}
        for src in self.sources.values():
            live = now - src.seen <= self.stale_after
            for fam in src.families:
                if fam.kind == "gauge" and not live:
                    continue
                _, _, samples = out.setdefault(fam.name, (fam.kind, fam.documentation, {}))
                for name, labels, value in fam.samples:
                    samples[(name, labels)] = samples.get((name, labels), 0.0) + value
        return out

    def render(self, now: float | None = None, vllm_aliases: bool = False) -> bytes:
        """Prometheus text exposition (``CONTENT_TYPE_LATEST``) of the merged samples; with
        ``vllm_aliases`` also under vLLM's names (``fathom.telemetry.vllm_aliases``)."""
        merged = self.merged(now)
        if vllm_aliases:
            merged.update(aliased(merged))

        class _Collector:
            def collect(self):
                for name, (kind, doc, samples) in merged.items():
                    metric = Metric(name, doc, kind)
                    for (sample_name, labels), value in samples.items():
                        metric.add_sample(sample_name, dict(labels), value)
                    yield metric

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())
        return generate_latest(registry)
