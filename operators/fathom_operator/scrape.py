"""Read the app's Prometheus metrics (docs/architecture.md) into autoscaling samples.

`parse(text, t)` → `Scrape`: gauges summed over replicas, counters and the TTFT histogram as
cumulative totals. `derive(prev, cur)` → `Sample`: what the policy looks at, with rates and the
TTFT p95 computed over the interval between two scrapes (Prometheus `rate` and
`histogram_quantile` semantics, counter resets included). Pure; `fetch` is the only I/O.
"""

import math
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

WAITING = "fathom_requests_waiting"
RUNNING = "fathom_requests_running"
KV_USAGE = "fathom_kv_cache_usage_ratio"
TTFT = "fathom_time_to_first_token_seconds"
GEN_TOKENS = "fathom_generation_tokens_total"


@dataclass(frozen=True)
class Scrape:
    t: float
    waiting: float = 0.0
    running: float = 0.0
    kv_usage_sum: float = 0.0  # sum over replicas of the usage ratio
    replicas: int = 0  # model replicas reporting a KV cache usage
    generation_tokens: float = 0.0
    ttft_buckets: tuple[tuple[float, float], ...] = ()  # (le, cumulative count), ascending le
    ttft_count: float = 0.0


@dataclass(frozen=True)
class Sample:
    """Load over one interval, as the policy sees it."""

    t: float
    waiting: float
    running: float
    kv_usage_sum: float = 0.0
    replicas: int = 0
    ttft_p95: float | None = None  # None: no first token in the interval
    tokens_per_second: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def idle(self) -> bool:
        return self.waiting <= 0 and self.running <= 0 and self.tokens_per_second <= 0


def parse(text: str, t: float) -> Scrape:
    """Sum the Fathom series of one /metrics page (all models and replicas behind the Service)."""
    sums = {WAITING: 0.0, RUNNING: 0.0, KV_USAGE: 0.0, GEN_TOKENS: 0.0}
    kv_replicas: set[str] = set()
    buckets: dict[float, float] = {}
    count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in sums:
                sums[s.name] += s.value
                if s.name == KV_USAGE:
                    kv_replicas.add(s.labels.get("replica", str(len(kv_replicas))))
            elif s.name == TTFT + "_bucket":
                le = math.inf if s.labels["le"] in ("+Inf", "inf") else float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == TTFT + "_count":
                count += s.value
    return Scrape(t=t, waiting=sums[WAITING], running=sums[RUNNING], kv_usage_sum=sums[KV_USAGE],
                  replicas=len(kv_replicas), generation_tokens=sums[GEN_TOKENS],
                  ttft_buckets=tuple(sorted(buckets.items())), ttft_count=count)


def _increase(prev: float, cur: float) -> float:
    return cur - prev if cur >= prev else cur  # a reset restarts the counter from zero


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus `histogram_quantile` over cumulative (le, count) buckets; None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


def derive(prev: Scrape | None, cur: Scrape) -> Sample:
    """The sample for the interval ending at `cur` (rates are zero for the first scrape)."""
    if prev is None or cur.t <= prev.t:
        return Sample(t=cur.t, waiting=cur.waiting, running=cur.running, kv_usage_sum=cur.kv_usage_sum,
                      replicas=cur.replicas)
    dt = cur.t - prev.t
    before = dict(prev.ttft_buckets)
    deltas = [(le, _increase(before.get(le, 0.0), n)) for le, n in cur.ttft_buckets]
    return Sample(
        t=cur.t, waiting=cur.waiting, running=cur.running, kv_usage_sum=cur.kv_usage_sum, replicas=cur.replicas,
        ttft_p95=histogram_quantile(0.95, deltas),
        tokens_per_second=_increase(prev.generation_tokens, cur.generation_tokens) / dt,
    )


async def fetch(session: aiohttp.ClientSession, url: str, t: float, timeout: float = 5.0, *,
                key: str | None = None) -> Scrape:
    """GET the metrics page at `url`, with `Authorization: Bearer key` when given (the app's
    /metrics needs it when tenants are on); raises aiohttp.ClientError / asyncio.TimeoutError."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers) as resp:
        resp.raise_for_status()
        return parse(await resp.text(), t)
