"""Prometheus metrics served by the ingress on GET /metrics (names: docs/architecture.md).

One registry per ingress process (not the global default, so tests and several apps in
one process do not collide). The ingress sees every request, so request, token and latency
series are counted here from each response's usage; per-replica engine gauges are filled
by the telemetry package.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str):
        self.model = model
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("fathom_requests", "HTTP API requests by final status.", ["model", "tenant", "status"], registry=r)
        self.prompt_tokens = Counter("fathom_prompt_tokens", "Prompt tokens of finished requests.", ["model", "tenant"], registry=r)
        self.cached_prompt_tokens = Counter(
            "fathom_cached_prompt_tokens", "Prompt tokens served from the prefix cache.", ["model", "tenant"], registry=r
        )
        self.generation_tokens = Counter("fathom_generation_tokens", "Completion tokens generated.", ["model", "tenant"], registry=r)
        self.cost = Counter("fathom_cost", "Cost of usage at the model's pricing.", ["model", "tenant"], registry=r)
        self.e2e = Histogram(
            "fathom_e2e_request_latency_seconds", "Request latency, arrival to last byte.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "fathom_time_to_first_token_seconds", "Arrival to first streamed token.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tpot = Histogram(
            "fathom_time_per_output_token_seconds", "Mean time between output tokens of a request.", ["model"],
            buckets=TOKEN_LATENCY_BUCKETS, registry=r,
        )

    def request_done(self, status: int, tenant: str = "default") -> None:
        self.requests.labels(self.model, tenant, str(status)).inc()

    def usage(self, prompt: int, cached: int, completion: int, tenant: str = "default", cost: float = 0.0) -> None:
        self.prompt_tokens.labels(self.model, tenant).inc(prompt)
        self.cached_prompt_tokens.labels(self.model, tenant).inc(cached)
        self.generation_tokens.labels(self.model, tenant).inc(completion)
        self.cost.labels(self.model, tenant).inc(cost)

    def latency(self, e2e: float, ttft: float | None = None, completion_tokens: int = 0) -> None:
        self.e2e.labels(self.model).observe(e2e)
        if ttft is not None:
            self.ttft.labels(self.model).observe(ttft)
            if completion_tokens > 1:
                self.tpot.labels(self.model).observe((e2e - ttft) / (completion_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
