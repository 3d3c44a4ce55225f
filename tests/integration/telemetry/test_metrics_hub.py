"""Fleet /metrics across real Ray processes: every replica's numbers, summed in one scrape."""

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from fathom.telemetry.hub import HUB_NAME, HUB_NAMESPACE, get_hub, render_fleet_metrics


@ray.remote(num_cpus=0)
class FakeReplica:
    """A process that records like a model replica does (real metrics, real pusher)."""

    def __init__(self, name: str):
        from fathom.telemetry.hub import start_metrics_pusher

        self.name = name
        self.pusher = start_metrics_pusher("replica")

    def serve(self, requests: int, running: int) -> None:
        from fathom.engine.outputs import EngineStats
        from fathom.telemetry import process_metrics

        m = process_metrics()
        for _ in range(requests):
            m.request_finished("demo", "acme", 200, e2e_seconds=0.2)
        m.engine_stats("demo", self.name, EngineStats(running, 0, running, 10, 100, 25, 0))
        ray.get(self.pusher.push_now())

    def stop(self) -> None:
        self.pusher.stop()


@pytest.fixture
def hub(tracing_env):
    yield get_hub()
    ray.kill(ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE))


def samples(text: bytes) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }


def test_one_scrape_sums_every_replica(hub, tracing_env):
    a, b = (FakeReplica.options(runtime_env=tracing_env).remote(name) for name in ("a", "b"))
    ray.get([a.serve.remote(3, 4), b.serve.remote(2, 1)])
    s = samples(render_fleet_metrics())
    assert s[("fathom_requests_total", (("model", "demo"), ("status", "200"), ("tenant", "acme")))] == 5
    assert s[("fathom_requests_running", (("model", "demo"), ("replica", "a")))] == 4
    assert s[("fathom_requests_running", (("model", "demo"), ("replica", "b")))] == 1
    assert s[("fathom_prefix_cache_hit_tokens_total", (("model", "demo"), ("replica", "b")))] == 25
    ray.get(b.stop.remote())  # replica b scaled down: its gauges go, its counts stay
    s = samples(render_fleet_metrics())
    assert ("fathom_requests_running", (("model", "demo"), ("replica", "b"))) not in s
    assert s[("fathom_requests_total", (("model", "demo"), ("status", "200"), ("tenant", "acme")))] == 5
    assert len(ray.get(hub.sources.remote())) == 2
