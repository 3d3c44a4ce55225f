"""The cluster-wide tenancy state: rate-limit buckets, in-flight leases and the usage ledger.

One `TenancyState` lives in one named Ray actor (fathom.tenancy.actor) and every ingress
replica talks to it: `admit` once before a request runs, `settle` once after it ends. It is
plain Python with the clock passed in, so it is unit-tested in one process.

Leases make settlement robust: an admitted request holds a concurrency slot and a token
reservation under a lease id until it is settled; a lease never settled (its ingress
replica died) is expired after `lease_ttl_s`, freeing the slot.
"""

import calendar
import time
from dataclasses import dataclass, field

from fathom.tenancy.limits import LimitDecision, TokenBucket, ratelimit_headers
from fathom.tenancy.metering import UsageLedger, UsageTotals
from fathom.tenancy.tenant_policy import Limits


@dataclass
class Lease:
    tenant: str
    reserved_tokens: int
    started: float
    sequences: int = 1  # engine sequences (prompts × n) the request runs: its share of the concurrency limit


@dataclass
class TenantBuckets:
    """One tenant's rate-limit buckets and the leases of its requests in flight."""

    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    in_flight: dict[str, Lease] = field(default_factory=dict)


@dataclass(frozen=True)
class Settlement:
    """The real counts of one finished (or aborted) request."""

    lease: str | None
    tenant: str
    model: str
    prompt_tokens: int
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    metered: bool = True  # False: the request failed before any usage; only release the lease


def seconds_to_next_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - now


def _sync_bucket(bucket: TokenBucket | None, per_minute: int | None, now: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return TokenBucket.full(per_minute, now)
    if bucket.capacity != per_minute:
        bucket.refill(now)
        bucket.resize(per_minute)
    return bucket


class TenancyState:
    """`ledger` is a `UsageLedger` (in this process, checkpointed with the rest) or anything with
    its interface (`fathom.tenancy.redis_ledger.RedisLedger`: a store of record outside Ray)."""

    def __init__(self, ledger: UsageLedger | None = None, lease_ttl_s: float = 3600.0):
        self.ledger = ledger or UsageLedger()
        self.lease_ttl_s = lease_ttl_s
        self.tenants: dict[str, TenantBuckets] = {}
        self._leases: dict[str, str] = {}  # lease id -> tenant
        self.next_lease_id = 0  # lease ids are never reused, across restores too
        self._last_expiry = float("-inf")

    def index_leases(self) -> None:
        """Rebuild the lease-id index from the tenants' leases (after a restore)."""
        self._leases = {lease_id: name for name, st in self.tenants.items() for lease_id in st.in_flight}

    def _tenant(self, name: str, limits: Limits, now: float) -> TenantBuckets:
        st = self.tenants.setdefault(name, TenantBuckets())
        st.requests = _sync_bucket(st.requests, limits.requests_per_minute, now)
        st.tokens = _sync_bucket(st.tokens, limits.tokens_per_minute, now)
        return st

    def admit(self, tenant: str, limits: Limits, prompt_tokens: int, max_tokens: int, now: float,
              sequences: int = 1) -> LimitDecision:
        """Admit one request of `prompt_tokens` that may generate up to `max_tokens` over
        `sequences` engine sequences (prompts × n: the work it starts, which is what the
        concurrency limit and requests/min count, so one HTTP request cannot fan out past them).

        Checks, in order: concurrency, monthly budget, requests/min, tokens/min; takes from
        the buckets only when all pass. The token reservation is capped at the tokens/min
        capacity so a long default max_tokens cannot lock a tenant out; the real count is
        charged at settlement (a bucket may then go below zero: the debt delays the next
        request). The monthly budget is checked against settled usage plus this prompt;
        requests in flight when it runs out may finish.
        """
        if now - self._last_expiry >= 1.0:
            self.expire(now)
        st = self._tenant(tenant, limits, now)
        reserve = prompt_tokens + max_tokens
        if st.tokens is not None:
            reserve = min(reserve, int(st.tokens.capacity))
        refusal = self._check(tenant, st, limits, prompt_tokens, reserve, now, sequences)
        if refusal is not None:
            return refusal
        if st.requests is not None:
            st.requests.take(sequences)
        if st.tokens is not None:
            st.tokens.take(reserve)
        lease = f"{tenant}/{self.next_lease_id}"
        self.next_lease_id += 1
        st.in_flight[lease] = Lease(tenant, reserve, now, sequences)
        self._leases[lease] = tenant
        return LimitDecision(True, lease=lease, headers=ratelimit_headers(st.requests, st.tokens, now))

    def _check(
        self, tenant: str, st: TenantBuckets, limits: Limits, prompt: int, reserve: int, now: float, sequences: int = 1
    ) -> LimitDecision | None:
        def refuse(reason: str, message: str, retry_after: float | None) -> LimitDecision:
            headers = ratelimit_headers(st.requests, st.tokens, now)
            return LimitDecision(False, reason=reason, message=message, retry_after=retry_after, headers=headers)

        cap = limits.max_concurrent_requests
        if cap is not None and sequences > cap:
            return refuse("concurrency", f"This request runs {sequences} sequences (prompts × n) but tenant "
                          f"{tenant!r} may run at most {cap} at once; send fewer prompts or a smaller n.", None)
        if cap is not None and sum(le.sequences for le in st.in_flight.values()) + sequences > cap:
            return refuse("concurrency", f"Too many concurrent requests for tenant {tenant!r}: "
                          f"limit {cap} sequences (prompts × n). Retry when one finishes.", 1.0)
        budget = limits.monthly_token_budget
        if budget is not None and self.ledger.tokens_this_month(tenant, now) + prompt > budget:
            return refuse("budget", f"Monthly token budget of tenant {tenant!r} exhausted: limit {budget} "
                          "tokens. It renews at the start of next month (UTC).", seconds_to_next_month(now))
        if st.requests is not None and sequences > st.requests.capacity:
            return refuse("requests", f"This request runs {sequences} sequences (prompts × n), more than tenant "
                          f"{tenant!r}'s {int(st.requests.capacity)} requests per minute.", None)
        if st.requests is not None and (wait := st.requests.wait(sequences, now)) > 0:
            return refuse("requests", f"Rate limit reached for tenant {tenant!r} on requests per minute: "
                          f"limit {int(st.requests.capacity)}. Retry in {wait:.3g}s.", wait)
        if st.tokens is not None and (wait := st.tokens.wait(reserve, now)) > 0:
            return refuse("tokens", f"Rate limit reached for tenant {tenant!r} on tokens per minute: limit "
                          f"{int(st.tokens.capacity)}, requested {reserve}. Retry in {wait:.3g}s.", wait)
        return None

    def settle(self, s: Settlement, now: float) -> None:
        """Record the real usage of a request, release its lease and correct its reservation."""
        if s.metered:
            usage = UsageTotals(1, s.prompt_tokens, s.cached_prompt_tokens, s.completion_tokens, s.cost)
            self.ledger.record(s.tenant, s.model, usage, now)
        tenant = self._leases.pop(s.lease, None) if s.lease else None
        if tenant is None:
            return  # open mode, or the lease expired: usage is still metered
        st = self.tenants[tenant]
        lease = st.in_flight.pop(s.lease)
        if st.tokens is not None:
            st.tokens.refill(now)
            st.tokens.give(lease.reserved_tokens - (s.prompt_tokens + s.completion_tokens))

    def settle_many(self, settlements: list[Settlement], now: float) -> None:
        for s in settlements:
            self.settle(s, now)

    def expire(self, now: float) -> int:
        """Drop leases older than lease_ttl_s (their replica is gone); returns how many."""
        self._last_expiry = now
        dropped = 0
        for st in self.tenants.values():
            for lease_id, lease in list(st.in_flight.items()):
                if now - lease.started > self.lease_ttl_s:
                    del st.in_flight[lease_id]
                    self._leases.pop(lease_id, None)
                    dropped += 1
        return dropped

    def usage_rows(self, now: float, tenant: str | None = None, start: float | None = None,
                   end: float | None = None, hourly: bool = False) -> list[dict]:
        """UsageTotals rows `{tenant, model, requests, prompt_tokens, ..., cost}` sorted by tenant, model;
        `hourly`: one row per tenant, model and hour, with the hour's `start_time`/`end_time`, oldest first."""
        if hourly:
            width = self.ledger.hour_s
            return [{"start_time": h, "end_time": h + width, "tenant": t, "model": m, **u.to_dict()}
                    for h, t, m, u in self.ledger.hourly(tenant, start, end)]
        rows = self.ledger.query(now, tenant=tenant, start=start, end=end)
        return [{"tenant": t, "model": m, **u.to_dict()} for (t, m), u in sorted(rows.items())]

    def in_flight(self, tenant: str) -> int:
        st = self.tenants.get(tenant)
        return len(st.in_flight) if st else 0
