import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fathom.engine.outputs import EngineStats, SpecDecodeStats
from fathom.telemetry import FathomMetrics
from fathom.telemetry.aggregate import MetricsAggregator, snapshot
from fathom.telemetry.metrics import METRICS

METRICS_DOC = Path(__file__).parents[3] / "docs" / "metrics.md"  # the one home of the table


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metric table of docs/metrics.md: name -> (type, labels)."""
    out = {}
    for line in METRICS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`fathom_"):
            continue
        kind = cells[1].split()[0]
        labels = tuple(label.strip() for label in cells[2].split(","))
        for name in re.findall(r"`(fathom_\w+)`", cells[0]):
            out[name] = (kind, labels)
    return out


def test_every_documented_metric_is_defined_once_with_its_labels():
    documented = documented_metrics()
    assert len(documented) == 25
    defined = {name: (kind, labels) for name, (kind, _, labels, _) in METRICS.items()}
    assert defined == documented


def exposition(metrics: FathomMetrics) -> dict[str, dict]:
    agg = MetricsAggregator()
    agg.update("p", snapshot(metrics.registry), now=0)
    return {f.name: f for f in text_string_to_metric_families(agg.render(now=0).decode())}


def test_recorded_values_come_out_under_the_documented_names():
    m = FathomMetrics()
    m.request_finished("demo", "acme", 200, e2e_seconds=0.4)
    m.request_finished("demo", "acme", 429)
    m.request_timing("demo", ttft=0.05, tpot=0.01, queue_time=0.002)
    m.usage("demo", "acme", prompt_tokens=100, completion_tokens=20, cached_tokens=64, cost=0.5)
    m.engine_stats("demo", "r0", EngineStats(3, 2, 25, 100, 100, 64, 0))  # running, waiting, kv used/total,
    m.engine_stats("demo", "r0", EngineStats(1, 0, 10, 100, 150, 64, 0))  # prefix queried/hit, preemptions
    r = m.registry.get_sample_value
    assert r("fathom_requests_total", {"model": "demo", "tenant": "acme", "status": "429"}) == 1
    assert r("fathom_e2e_request_latency_seconds_count", {"model": "demo"}) == 1  # the 429 is not timed
    assert r("fathom_time_to_first_token_seconds_sum", {"model": "demo"}) == pytest.approx(0.05)
    assert r("fathom_cached_prompt_tokens_total", {"model": "demo", "tenant": "acme"}) == 64
    assert r("fathom_cost_total", {"model": "demo", "tenant": "acme"}) == 0.5
    replica = {"model": "demo", "replica": "r0"}
    assert r("fathom_requests_running", replica) == 1 and r("fathom_kv_cache_usage_ratio", replica) == 0.1
    assert r("fathom_prefix_cache_queried_tokens_total", replica) == 150  # cumulative stats, counted once
    assert r("fathom_prefix_cache_hit_tokens_total", replica) == 64
    m.engine_stats("demo", "r0", EngineStats(0, 0, 0, 100, 10, 5, 0))
    assert r("fathom_prefix_cache_queried_tokens_total", replica) == 160  # engine restarted: counts on
    families = exposition(m)
    assert set(families) == {
        n.removesuffix("_total") if k == "counter" else n for n, (k, *_) in METRICS.items()
    }
    assert families["fathom_kv_cache_blocks_total"].samples[0].value == 100
    assert families["fathom_time_to_first_token_seconds"].type == "histogram"


def test_speculative_decoding_counters_and_acceptance_rate_per_position():
    m = FathomMetrics()
    spec = SpecDecodeStats(num_drafts=10, num_draft_tokens=20, num_accepted_tokens=9, accepted_per_position=[6, 3])
    m.engine_stats("demo", "r0", EngineStats(1, 0, 1, 10, 0, 0, 0, spec_decode=spec))
    spec = SpecDecodeStats(num_drafts=20, num_draft_tokens=40, num_accepted_tokens=16, accepted_per_position=[11, 5])
    m.engine_stats("demo", "r0", EngineStats(1, 0, 1, 10, 0, 0, 0, spec_decode=spec))
    r, replica = m.registry.get_sample_value, {"model": "demo", "replica": "r0"}
    assert r("fathom_spec_decode_num_drafts_total", replica) == 20  # cumulative stats, counted once
    assert r("fathom_spec_decode_num_draft_tokens_total", replica) == 40
    assert r("fathom_spec_decode_num_accepted_tokens_total", replica) == 16
    assert r("fathom_spec_decode_num_accepted_tokens_per_pos_total", {**replica, "position": "1"}) == 5
    assert r("fathom_spec_decode_acceptance_rate", {**replica, "position": "0"}) == pytest.approx(11 / 20)


def _source(requests: int, running: int, replica: str) -> list:
    m = FathomMetrics()
    for _ in range(requests):
        m.request_finished("demo", "acme", 200, e2e_seconds=1.0)
    m.engine_stats("demo", replica, EngineStats(running, 0, 1, 10, 0, 0, 0))
    return snapshot(m.registry)


def _value(text: bytes, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_fleet_sums_counters_and_keeps_them_after_a_replica_goes():
    agg = MetricsAggregator(stale_after=10)
    agg.update("ingress-1", _source(3, 0, "r0"), now=0)
    agg.update("ingress-2", _source(2, 0, "r0"), now=0)
    agg.update("replica-a", _source(0, 4, "a"), now=0)
    agg.update("replica-b", _source(0, 5, "b"), now=0)
    text = agg.render(now=1)
    assert _value(text, "fathom_requests_total", status="200") == 5
    assert _value(text, "fathom_e2e_request_latency_seconds_count") == 5
    assert _value(text, "fathom_e2e_request_latency_seconds_bucket", le="1.0") == 5
    assert _value(text, "fathom_requests_running", replica="a") == 4
    assert _value(text, "fathom_requests_running", replica="b") == 5
    agg.update("ingress-1", _source(4, 0, "r0"), now=20)
    agg.update("replica-a", _source(0, 1, "a"), now=20)  # replica-b went silent, ingress-2 too
    text = agg.render(now=21)
    assert _value(text, "fathom_requests_total", status="200") == 6  # ingress-2's 2 still counted
    assert _value(text, "fathom_requests_running", replica="a") == 1
    assert _value(text, "fathom_requests_running", replica="b") is None  # stale gauges dropped
    agg.forget("replica-a")
    assert _value(agg.render(now=21), "fathom_requests_running", replica="a") is None
    assert "_created" not in text.decode()


def test_eplb_expert_counts_become_increments_per_expert():
    m = FathomMetrics()
    m.engine_stats("demo", "r0", EngineStats(0, 0, 0, 10, 0, 0, 0, moe_expert_tokens=[5, 0, 7], moe_imbalance=1.4))
    m.engine_stats("demo", "r0", EngineStats(0, 0, 0, 10, 0, 0, 0, moe_expert_tokens=[9, 2, 7], moe_imbalance=1.1))
    r = m.registry.get_sample_value
    replica = {"model": "demo", "replica": "r0"}
    assert [r("fathom_moe_expert_tokens_total", {**replica, "expert": str(e)}) for e in range(3)] == [9, 2, 7]
    assert r("fathom_moe_imbalance_ratio", replica) == 1.1
