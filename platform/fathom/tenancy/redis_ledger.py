"""The usage ledger with Redis as its store of record (`ServeSettings.usage_store`).

Same contract as `fathom.tenancy.metering.UsageLedger` (record, window queries at minute then hour
resolution, hourly rows, all-time totals, per-month tokens for budgets), but every number lives in
Redis and every write is an atomic increment. So the ledger outlives the Ray cluster, not only
the tenancy actor: a head restart, and a KubeRay NewCluster upgrade, during which the old and the
new cluster both meter into the same keys for a while, lose and double-count nothing.

Keys under `<key>:usage:` — `min:<t>` / `hour:<t>` hashes of one bucket (fields
`tenant␟model␟metric`, expiring with their tier), `mins` / `hours` sorted sets of bucket starts,
`total` (all time, same fields), `month:<YYYY-MM>` (tokens per tenant). One pipeline per record.
"""

import math
import os
from collections import defaultdict
from dataclasses import fields

import redis

from fathom.tenancy.metering import UsageTotals, month_of

PASSWORD_ENV = "FATHOM_USAGE_STORE_PASSWORD"
SEP = "\x1f"
METRICS = tuple(f.name for f in fields(UsageTotals))


def connect(url: str) -> redis.Redis:
    """A client for `redis://host:port[/db]`; the password comes from $FATHOM_USAGE_STORE_PASSWORD
    (a Secret in the pod), never from the URL, which travels in the Serve config."""
    return redis.Redis.from_url(url, password=os.environ.get(PASSWORD_ENV) or None,
                                socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)


class RedisLedger:
    def __init__(self, client: redis.Redis, key: str, fine_width_s: int = 60, fine_retention_s: int = 2 * 86400,
                 hour_s: int = 3600, hour_retention_s: int = 400 * 86400):
        self.r, self.p = client, f"{key}:usage:"
        self.tiers = {"min": (fine_width_s, fine_retention_s), "hour": (hour_s, hour_retention_s)}
        self.hour_s = hour_s

    def record(self, tenant: str, model: str, usage: UsageTotals, now: float) -> None:
        pipe = self.r.pipeline(transaction=True)
        for tier, (width, retention) in self.tiers.items():
            start = int(now // width) * width
            self._add(pipe, f"{self.p}{tier}:{start}", tenant, model, usage)
            pipe.expire(f"{self.p}{tier}:{start}", retention + width)
            pipe.zadd(f"{self.p}{tier}s", {str(start): start})
            pipe.zremrangebyscore(f"{self.p}{tier}s", "-inf", f"({now - retention - width}")
        self._add(pipe, f"{self.p}total", tenant, model, usage)
        month = f"{self.p}month:{month_of(now)}"
        pipe.hincrby(month, tenant, usage.total_tokens)
        pipe.expire(month, self.tiers["hour"][1])
        pipe.execute()

    @staticmethod
    def _add(pipe, key: str, tenant: str, model: str, usage: UsageTotals) -> None:
        for metric in METRICS:
            value = getattr(usage, metric)
            if value and isinstance(value, int):
                pipe.hincrby(key, SEP.join((tenant, model, metric)), value)
            elif value:
                pipe.hincrbyfloat(key, SEP.join((tenant, model, metric)), value)

    def tokens_this_month(self, tenant: str, now: float) -> int:
        return int(self.r.hget(f"{self.p}month:{month_of(now)}", tenant) or 0)

    def query(self, now: float, tenant: str | None = None, start: float | None = None,
              end: float | None = None) -> dict[tuple[str, str], UsageTotals]:
        """UsageTotals per (tenant, model) in [start, end) (all time when both are None)."""
        if start is None and end is None:
            return _sum([self.r.hgetall(f"{self.p}total")], tenant)
        start = 0.0 if start is None else start
        tier = "min" if start >= now - self.tiers["min"][1] else "hour"
        return _sum([h for _, h in self._buckets(tier, start, math.inf if end is None else end)], tenant)

    def hourly(self, tenant: str | None = None, start: float | None = None,
               end: float | None = None) -> list[tuple[int, str, str, UsageTotals]]:
        """(hour start, tenant, model, usage) per hour with usage in [start, end), oldest first."""
        rows = []
        for hour, h in self._buckets("hour", 0.0 if start is None else start, math.inf if end is None else end):
            rows += [(hour, t, m, u) for (t, m), u in sorted(_sum([h], tenant).items())]
        return rows

    def _buckets(self, tier: str, start: float, end: float) -> list[tuple[int, dict]]:
        width = self.tiers[tier][0]
        starts = [int(s) for s in self.r.zrangebyscore(f"{self.p}{tier}s", f"({start - width}", f"({end}")]
        pipe = self.r.pipeline(transaction=False)
        for s in starts:
            pipe.hgetall(f"{self.p}{tier}:{s}")
        return list(zip(starts, pipe.execute(), strict=True))


def _sum(hashes: list[dict], tenant: str | None) -> dict[tuple[str, str], UsageTotals]:
    out: dict[tuple[str, str], UsageTotals] = defaultdict(UsageTotals)
    for h in hashes:
        for field, value in h.items():
            t, m, metric = field.decode().split(SEP)
            if tenant is None or t == tenant:
                total = out[(t, m)]
                setattr(total, metric, getattr(total, metric) + (float(value) if metric == "cost" else int(value)))
    return dict(out)
