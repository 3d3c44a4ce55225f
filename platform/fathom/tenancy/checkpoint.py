"""The tenancy state's checkpoint: versioned JSON, validated field by field on restore.

`encode(state) -> bytes` and `decode(raw) -> TenancyState` are inverse. The format is plain
JSON (never pickle: restoring a checkpoint executes nothing, whoever wrote the bytes), with
`version` first; `decode` refuses any other version, a missing or unknown field, or a value of
the wrong type with `CheckpointError` naming it, and never returns a half-restored state.

Version 1 holds: the usage ledger (minute and hour buckets, all-time totals, per-month token
totals that monthly budgets count against; `null` when the ledger lives in Redis, its own store
of record), every tenant's rate-limit buckets (level and the time it was last refilled) and
in-flight leases, the lease TTL and the next lease id.
"""

import json
from collections import defaultdict

from pydantic import BaseModel, ConfigDict, ValidationError

from fathom.tenancy.limits import TokenBucket
from fathom.tenancy.metering import TimeTier, UsageLedger, UsageTotals
from fathom.tenancy.state import Lease, TenancyState, TenantBuckets

VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (wrong version, malformed, wrong types)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Usage(_Strict):
    requests: int
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    cost: float


class _Row(_Strict):
    tenant: str
    model: str
    usage: _Usage


class _Bucket(_Strict):
    start: int
    rows: list[_Row]


class _TierDoc(_Strict):
    width_s: int
    retention_s: int
    buckets: list[_Bucket]


class _MonthTokens(_Strict):
    tenant: str
    month: str
    tokens: int


class _Ledger(_Strict):
    fine: _TierDoc
    coarse: _TierDoc
    totals: list[_Row]
    month_tokens: list[_MonthTokens]


class _TokenBucket(_Strict):
    capacity: float
    level: float
    stamp: float


class _Lease(_Strict):
    id: str
    reserved_tokens: int
    started: float


class _Tenant(_Strict):
    name: str
    requests: _TokenBucket | None
    tokens: _TokenBucket | None
    leases: list[_Lease]


class Checkpoint(_Strict):
    """The whole checkpoint, version 1."""

    version: int
    lease_ttl_s: float
    next_lease_id: int
    ledger: _Ledger | None
    tenants: list[_Tenant]


def encode(state: TenancyState) -> bytes:
    """The state as version-1 JSON (UTF-8)."""
    doc = Checkpoint(
        version=VERSION, lease_ttl_s=state.lease_ttl_s, next_lease_id=state.next_lease_id,
        ledger=_ledger_out(state.ledger) if isinstance(state.ledger, UsageLedger) else None,
        tenants=[_tenant_out(name, st) for name, st in sorted(state.tenants.items())],
    )
    return doc.model_dump_json().encode()


def decode(raw: bytes, ledger=None) -> TenancyState:
    """The state `encode` wrote; `CheckpointError` for anything else. `ledger`: the external
    ledger (RedisLedger) the state uses instead of one in the checkpoint."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"tenancy checkpoint is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        found = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"tenancy checkpoint version {found!r} is not {VERSION}")
    try:
        checkpoint = Checkpoint.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"tenancy checkpoint field {where}: {first['msg']}") from None
    if ledger is None and checkpoint.ledger is None:
        raise CheckpointError("tenancy checkpoint has no ledger (it was kept in Redis) and no usage store is set")
    return _state_in(checkpoint, ledger)


def _usage_out(u: UsageTotals) -> _Usage:
    return _Usage(requests=u.requests, prompt_tokens=u.prompt_tokens, cached_prompt_tokens=u.cached_prompt_tokens,
                  completion_tokens=u.completion_tokens, cost=float(u.cost))


def _rows_out(per_key: dict[tuple[str, str], UsageTotals]) -> list[_Row]:
    return [_Row(tenant=t, model=m, usage=_usage_out(u)) for (t, m), u in sorted(per_key.items())]


def _tier_out(tier: TimeTier) -> _TierDoc:
    buckets = [_Bucket(start=start, rows=_rows_out(per_key)) for start, per_key in sorted(tier.buckets.items())]
    return _TierDoc(width_s=tier.width_s, retention_s=tier.retention_s, buckets=buckets)


def _ledger_out(ledger: UsageLedger) -> _Ledger:
    months = [_MonthTokens(tenant=t, month=m, tokens=n) for (t, m), n in sorted(ledger.month_tokens.items())]
    return _Ledger(fine=_tier_out(ledger.fine), coarse=_tier_out(ledger.coarse),
                   totals=_rows_out(ledger.totals), month_tokens=months)


def _bucket_out(b: TokenBucket | None) -> _TokenBucket | None:
    return None if b is None else _TokenBucket(capacity=b.capacity, level=b.level, stamp=b.stamp)


def _tenant_out(name: str, st: TenantBuckets) -> _Tenant:
    leases = [_Lease(id=i, reserved_tokens=lease.reserved_tokens, started=lease.started)
              for i, lease in sorted(st.in_flight.items())]
    return _Tenant(name=name, requests=_bucket_out(st.requests), tokens=_bucket_out(st.tokens), leases=leases)


def _usage_in(u: _Usage) -> UsageTotals:
    return UsageTotals(u.requests, u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens, u.cost)


def _rows_in(rows: list[_Row]) -> dict[tuple[str, str], UsageTotals]:
    out: dict[tuple[str, str], UsageTotals] = defaultdict(UsageTotals)
    for r in rows:
        out[(r.tenant, r.model)].add(_usage_in(r.usage))
    return out


def _tier_in(doc: _TierDoc) -> TimeTier:
    tier = TimeTier(doc.width_s, doc.retention_s)
    tier.buckets = {b.start: _rows_in(b.rows) for b in doc.buckets}
    return tier


def _bucket_in(b: _TokenBucket | None) -> TokenBucket | None:
    return None if b is None else TokenBucket(capacity=b.capacity, level=b.level, stamp=b.stamp)


def _ledger_in(doc: _Ledger) -> UsageLedger:
    ledger = UsageLedger()
    ledger.fine, ledger.coarse = _tier_in(doc.fine), _tier_in(doc.coarse)
    ledger.totals = _rows_in(doc.totals)
    ledger.month_tokens = defaultdict(int, {(m.tenant, m.month): m.tokens for m in doc.month_tokens})
    return ledger


def _state_in(doc: Checkpoint, ledger) -> TenancyState:
    state = TenancyState(ledger or _ledger_in(doc.ledger), lease_ttl_s=doc.lease_ttl_s)
    state.next_lease_id = doc.next_lease_id
    for t in doc.tenants:
        leases = {lease.id: Lease(t.name, lease.reserved_tokens, lease.started) for lease in t.leases}
        state.tenants[t.name] = TenantBuckets(_bucket_in(t.requests), _bucket_in(t.tokens), leases)
    state.index_leases()
    return state
