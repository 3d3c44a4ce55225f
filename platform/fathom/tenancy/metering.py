"""UsageTotals metering per tenant and model: requests, prompt / cached / completion tokens, cost.

Counts are kept in time buckets at two resolutions (minutes for the recent past, hours for
the long tail) so a time-window query stays cheap and memory stays bounded; all-time totals
and per-month token totals (for monthly budgets) are kept alongside. Pure Python, clock
passed in.
"""

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

from fathom.api.engine import Pricing


@dataclass
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "UsageTotals") -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.cached_prompt_tokens += other.cached_prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost

    def to_dict(self) -> dict:
        return {**asdict(self), "total_tokens": self.total_tokens}


def cost_of(pricing: Pricing, prompt_tokens: int, cached_prompt_tokens: int, completion_tokens: int) -> float:
    """Cost of one request: uncached prompt, cached prompt and completion tokens at their prices."""
    uncached = max(0, prompt_tokens - cached_prompt_tokens)
    return (
        uncached * pricing.prompt_per_million
        + cached_prompt_tokens * pricing.cached_prompt_per_million
        + completion_tokens * pricing.completion_per_million
    ) / 1e6


def month_of(t: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(t))


class TimeTier:
    """UsageTotals summed into fixed-width time buckets, oldest dropped after `retention_s`."""

    def __init__(self, width_s: int, retention_s: int):
        self.width_s, self.retention_s = width_s, retention_s
        self.buckets: dict[int, dict[tuple[str, str], UsageTotals]] = {}

    def record(self, key: tuple[str, str], usage: UsageTotals, now: float) -> None:
        start = int(now // self.width_s) * self.width_s
        self.buckets.setdefault(start, defaultdict(UsageTotals))[key].add(usage)
        horizon = now - self.retention_s
        for old in [b for b in self.buckets if b + self.width_s < horizon]:
            del self.buckets[old]

    def covers(self, start: float, now: float) -> bool:
        return start >= now - self.retention_s

    def rows(self, start: float, end: float, tenant: str | None) -> list[tuple[int, str, str, UsageTotals]]:
        """(bucket start, tenant, model, usage) of every bucket overlapping [start, end), oldest first."""
        return [(b, t, m, usage) for b, per_key in sorted(self.buckets.items())
                if start < b + self.width_s and b < end
                for (t, m), usage in sorted(per_key.items()) if tenant is None or t == tenant]

    def query(self, start: float, end: float, tenant: str | None) -> dict[tuple[str, str], UsageTotals]:
        """Sum of buckets overlapping [start, end) (resolution: the bucket width)."""
        out: dict[tuple[str, str], UsageTotals] = defaultdict(UsageTotals)
        for b, per_key in self.buckets.items():
            if b + self.width_s <= start or b >= end:
                continue
            for key, usage in per_key.items():
                if tenant is None or key[0] == tenant:
                    out[key].add(usage)
        return dict(out)


class UsageLedger:
    """Per (tenant, model) usage with time-window queries.

    Window queries have `fine_width_s` resolution over the last `fine_retention_s`, and
    `coarse_width_s` resolution beyond; all-time totals are exact.
    """

    def __init__(
        self,
        fine_width_s: int = 60,
        fine_retention_s: int = 2 * 86400,
        coarse_width_s: int = 3600,
        coarse_retention_s: int = 400 * 86400,
    ):
        self.fine = TimeTier(fine_width_s, fine_retention_s)
        self.coarse = TimeTier(coarse_width_s, coarse_retention_s)
        self.totals: dict[tuple[str, str], UsageTotals] = defaultdict(UsageTotals)
        self.month_tokens: dict[tuple[str, str], int] = defaultdict(int)

    def record(self, tenant: str, model: str, usage: UsageTotals, now: float) -> None:
        key = (tenant, model)
        self.fine.record(key, usage, now)
        self.coarse.record(key, usage, now)
        self.totals[key].add(usage)
        self.month_tokens[(tenant, month_of(now))] += usage.total_tokens

    @property
    def hour_s(self) -> int:
        """Width of the rows `hourly` returns."""
        return self.coarse.width_s

    def hourly(self, tenant: str | None = None, start: float | None = None,
               end: float | None = None) -> list[tuple[int, str, str, UsageTotals]]:
        """(hour start, tenant, model, usage) per hour with usage in [start, end), oldest first:
        the flat form billing systems import. Hours are the coarse tier's buckets (kept 400 days)."""
        return self.coarse.rows(0.0 if start is None else start, math.inf if end is None else end, tenant)

    def tokens_this_month(self, tenant: str, now: float) -> int:
        return self.month_tokens.get((tenant, month_of(now)), 0)

    def query(
        self, now: float, tenant: str | None = None, start: float | None = None, end: float | None = None
    ) -> dict[tuple[str, str], UsageTotals]:
        """UsageTotals per (tenant, model) in [start, end) (all time when both are None)."""
        if start is None and end is None:
            return {k: v for k, v in self.totals.items() if tenant is None or k[0] == tenant}
        start = 0.0 if start is None else start
        end = float("inf") if end is None else end
        tier = self.fine if self.fine.covers(start, now) else self.coarse
        return tier.query(start, end, tenant)
