"""The autoscaling policy and the metrics it reads, as pure functions."""

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fathom.api.model_service import Autoscaling
from fathom_operator.scaling_policy import asks, decide, recommend
from fathom_operator.scrape import Sample, derive, histogram_quantile, parse

AUTO = Autoscaling(min_replicas=0, max_replicas=8, interval_seconds=10, scale_down_stabilization_seconds=60,
                   scale_to_zero_after_seconds=120,  # the KV target pinned: the figures below divide by 0.8
                   targets={"waitingRequestsPerReplica": 2, "kvCacheUtilization": 0.8})


def series(*loads, start=0.0, step=10.0, **kw) -> list[Sample]:
    """Samples every `step` s: each load is (waiting, running, kv_usage_sum)."""
    return [Sample(t=start + i * step, waiting=w, running=r, kv_usage_sum=kv, replicas=2, **kw)
            for i, (w, r, kv) in enumerate(loads)]


def test_each_target_asks_and_the_largest_wins():
    auto = Autoscaling(targets={"waitingRequestsPerReplica": 2, "kvCacheUtilization": 0.5,
                                "ttftP95Seconds": 1.0, "tokensPerSecondPerReplica": 100,
                                "runningRequestsPerReplica": 10})
    s = Sample(t=0, waiting=5, running=30, kv_usage_sum=1.6, replicas=2, ttft_p95=2.5, tokens_per_second=250)
    assert asks(s, auto) == {"waitingRequestsPerReplica": 3, "kvCacheUtilization": 4, "ttftP95Seconds": 5,
                             "tokensPerSecondPerReplica": 3, "runningRequestsPerReplica": 3}
    assert recommend(s, auto) == (4, "ttftP95Seconds")  # 5 clamped to maxReplicas 4


def test_a_short_queue_or_fast_ttft_never_holds_capacity():
    s = Sample(t=0, waiting=0, running=0, kv_usage_sum=0, replicas=4, ttft_p95=0.1)
    assert asks(s, Autoscaling(targets={"ttftP95Seconds": 1.0, "waitingRequestsPerReplica": 1})) == {
        "waitingRequestsPerReplica": 0, "kvCacheUtilization": 0}


def test_scale_up_is_immediate():
    history = series((0, 2, 0.8), (0, 2, 0.8), (12, 6, 1.8))
    assert decide(history, AUTO, current=2).replicas == 6  # 12 waiting / 2 per replica


def test_scale_up_window_takes_the_smallest():
    auto = AUTO.model_copy(update={"scale_up_stabilization_seconds": 20})
    history = series((0, 2, 0.8), (0, 2, 0.8), (12, 6, 1.8))
    assert decide(history, auto, current=2).replicas == 2  # one busy sample is not enough
    assert decide(series((8, 6, 1.8), (8, 6, 1.8), (12, 6, 1.8)), auto, current=2).replicas == 4


def test_scale_down_waits_for_the_window():
    busy, light = (0, 8, 3.2), (0, 2, 0.8)   # kv asks 4, then 1
    history = series(*[busy] * 7 + [light] * 3)  # load dropped 20 s ago, window 60 s
    assert decide(history, AUTO, current=4).replicas == 4
    history = series(*[busy] * 3 + [light] * 7)  # dropped 60 s ago: the window holds only light
    assert decide(history, AUTO, current=4).replicas == 1


def test_default_kv_target_keeps_headroom_for_a_burst():
    s = Sample(t=0, waiting=0, running=0, kv_usage_sum=2.0, replicas=4)  # 4 replicas half full
    assert Autoscaling().targets.kv_cache_utilization == 0.5  # benchmarks/autoscaler_sim.py: meets its target
    assert recommend(s, Autoscaling()) == (4, "kvCacheUtilization")  # 2x burst room: no scale-up yet


def test_scale_down_needs_a_full_window_of_history():
    assert decide(series((0, 2, 0.8), (0, 2, 0.8)), AUTO, current=4).replicas == 4


def test_idle_goes_to_zero_only_after_the_idle_period():
    idle = (0, 0, 0)
    assert decide(series(*[idle] * 10), AUTO, current=1).replicas == 1    # 90 s idle < 120 s
    assert decide(series(*[idle] * 14), AUTO, current=1).replicas == 0    # 130 s idle
    busy_then_idle = series(*[(0, 1, 0.1)] * 5 + [idle] * 10)
    assert decide(busy_then_idle, AUTO, current=1).replicas == 1
    assert decide(series(*[idle] * 14), AUTO.model_copy(update={"min_replicas": 1}), current=1).replicas == 1


def test_first_queued_request_at_zero_wakes_one():
    history = series((0, 0, 0), (0, 0, 0), (1, 0, 0))
    decision = decide(history, AUTO, current=0)
    assert decision.replicas == 1 and "queued" in decision.reason
    assert decide(series((0, 0, 0)), AUTO, current=0).replicas == 0
    assert decide(series((9, 0, 0)), AUTO, current=0).replicas == 5  # a burst wakes what it needs


def _app_metrics(waiting: dict, kv: dict, tokens: int, ttfts: list[float]) -> str:
    reg = CollectorRegistry()
    w = Gauge("fathom_requests_waiting", "", ["model", "replica"], registry=reg)
    r = Gauge("fathom_requests_running", "", ["model", "replica"], registry=reg)
    k = Gauge("fathom_kv_cache_usage_ratio", "", ["model", "replica"], registry=reg)
    c = Counter("fathom_generation_tokens", "", ["model", "tenant"], registry=reg)
    h = Histogram("fathom_time_to_first_token_seconds", "", ["model"], registry=reg,
                  buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    for replica, value in waiting.items():
        w.labels("m", replica).set(value)
        r.labels("m", replica).set(1)
    for replica, value in kv.items():
        k.labels("m", replica).set(value)
    c.labels("m", "a").inc(tokens)
    for x in ttfts:
        h.labels("m").observe(x)
    return generate_latest(reg).decode()


def test_parse_and_derive_the_apps_metrics():
    first = parse(_app_metrics({"r1": 1, "r2": 2, "ingress": 4}, {"r1": 0.5, "r2": 0.25}, 100, [0.05] * 50), t=0)
    assert (first.waiting, first.running, first.replicas) == (7, 3, 2)
    assert first.kv_usage_sum == pytest.approx(0.75)
    second = parse(_app_metrics({"r1": 0}, {"r1": 0.5, "r2": 0.25}, 600, [0.05] * 50 + [3.0] * 50), t=10)
    sample = derive(first, second)
    assert sample.tokens_per_second == pytest.approx(50)
    assert 2.5 <= sample.ttft_p95 <= 5  # only the interval's 50 slow first tokens count
    restarted = parse(_app_metrics({}, {}, 40, []), t=20)
    assert derive(second, restarted).tokens_per_second == pytest.approx(4)  # counter reset
    assert derive(second, restarted).ttft_p95 is None


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(0.1, 10.0), (0.5, 60.0), (1.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (50 - 10) / 50)
    assert histogram_quantile(0.95, []) is None


def test_zero_turns_a_default_target_off():
    auto = Autoscaling(targets={"kvCacheUtilization": 0, "waitingRequestsPerReplica": 0, "ttftP95Seconds": 1.0})
    s = Sample(t=0, waiting=50, running=60, kv_usage_sum=3.0, replicas=2, ttft_p95=0.5)
    assert asks(s, auto) == {}
