"""The ingress's view of Fathom's metrics (names: docs/architecture.md, defined once in
`fathom.telemetry.metrics`).

The ingress sees every request, so request, token and latency series are counted here from
each response's usage; per-replica engine gauges come from the model replicas. In a Serve
replica (a Ray actor) this records into the process's `FathomMetrics`, which `fathom.telemetry`
pushes to the app's metrics hub, and `GET /metrics` renders the whole app (`render`); elsewhere
(tests, several apps in one process) each `ServeMetrics` has a registry of its own.
"""

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fathom.telemetry.metrics import FathomMetrics, process_metrics
from fathom.telemetry.runtime import in_ray_actor, render_metrics


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str, metrics: FathomMetrics | None = None, vllm_aliases: bool = False):
        self.model, self.vllm_aliases = model, vllm_aliases
        self.metrics = metrics or (process_metrics() if in_ray_actor() else FathomMetrics())
        self.registry = self.metrics.registry

    def request_done(self, status: int, tenant: str = "default") -> None:
        self.metrics.request_finished(self.model, tenant, status)

    def usage(self, prompt: int, cached: int, completion: int, tenant: str = "default", cost: float = 0.0) -> None:
        self.metrics.usage(self.model, tenant, prompt_tokens=prompt, completion_tokens=completion,
                           cached_tokens=cached, cost=cost)

    def latency(self, e2e: float, ttft: float | None = None, completion_tokens: int = 0) -> None:
        self.metrics.e2e_latency(self.model, e2e)
        tpot = (e2e - ttft) / (completion_tokens - 1) if ttft is not None and completion_tokens > 1 else None
        self.metrics.request_timing(self.model, ttft=ttft, tpot=tpot)

    def held(self, n: int) -> None:
        """Requests held at this ingress while no model replica runs (fathom.serve.cold_start)."""
        self.metrics.ingress_waiting(self.model, n)

    async def render(self) -> bytes:
        return await render_metrics(self.metrics, self.vllm_aliases)
