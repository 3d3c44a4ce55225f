"""vLLM's metric names behind a flag: the same values under vLLM's names and its `model_name` label."""

from prometheus_client.parser import text_string_to_metric_families

from fathom.engine.outputs import EngineStats
from fathom.telemetry.aggregate import MetricsAggregator, snapshot
from fathom.telemetry.metrics import FathomMetrics

# The names vLLM's own dashboards, KEDA examples and the Gateway API Inference Extension read.
VLLM = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_bucket", "vllm:time_per_output_token_seconds_sum",
        "vllm:inter_token_latency_seconds_count", "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_count", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")


def rendered(aliases: bool) -> dict:
    m = FathomMetrics(otlp=False)
    m.engine_stats("demo", "r1", EngineStats(3, 2, 40, 100, 50, 20, 0))
    m.ingress_waiting("demo", 1)
    m.request_timing("demo", ttft=0.2, tpot=0.05, queue_time=0.01)
    m.e2e_latency("demo", 1.5)
    m.usage("demo", "acme", prompt_tokens=11, completion_tokens=7)
    agg = MetricsAggregator()
    agg.update("p", snapshot(m.registry))
    text = agg.render(vllm_aliases=aliases).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_aliases_carry_the_same_values_under_vllm_names():
    s = rendered(True)
    names = {name for name, _ in s}
    assert set(VLLM) <= names
    assert s[("vllm:num_requests_waiting", (("model_name", "demo"), ("replica", "r1")))] == 2
    assert s[("vllm:num_requests_waiting", (("model_name", "demo"), ("replica", "ingress")))] == 1
    assert s[("vllm:kv_cache_usage_perc", (("model_name", "demo"), ("replica", "r1")))] == 0.4
    assert s[("vllm:prefix_cache_hits_total", (("model_name", "demo"), ("replica", "r1")))] == 20
    assert s[("vllm:generation_tokens_total", (("model_name", "demo"), ("tenant", "acme")))] == 7
    assert s[("vllm:time_to_first_token_seconds_count", (("model_name", "demo"),))] == 1
    for (name, labels), value in s.items():  # every fathom series is still there, unchanged
        if name.startswith("fathom_"):
            assert rendered(False)[(name, labels)] == value


def test_off_by_default():
    assert not any(name.startswith("vllm:") for name, _ in rendered(False))
