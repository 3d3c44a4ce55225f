"""The tenancy checkpoint: versioned JSON that restores usage, budgets, buckets and leases exactly."""

import calendar
import json
import pickle

import pytest

from fathom.tenancy import checkpoint
from fathom.tenancy.state import Settlement, TenancyState
from fathom.tenancy.tenant_policy import Limits

T0 = calendar.timegm((2026, 11, 29, 12, 0, 0))
LIMITS = Limits(requests_per_minute=3, tokens_per_minute=1000, max_concurrent_requests=2, monthly_token_budget=5000)


def busy_state() -> tuple[TenancyState, str]:
    """Two tenants with usage over several hours, drained buckets and one lease in flight."""
    st = TenancyState()
    for hour in range(3):
        d = st.admit("acme", LIMITS, 100, 200, T0 + hour * 3600)
        st.settle(Settlement(d.lease, "acme", "m", 100, 40, 150, cost=0.25), T0 + hour * 3600 + 5)
    st.settle(Settlement(None, "beta", "other", 7, 0, 3, cost=0.01), T0)
    held = st.admit("acme", LIMITS, 10, 10, T0 + 3 * 3600)
    return st, held.lease


def test_restore_is_exact():
    st, lease = busy_state()
    back = checkpoint.decode(checkpoint.encode(st))
    now = T0 + 3 * 3600 + 1
    assert back.usage_rows(now) == st.usage_rows(now)
    assert back.usage_rows(now, start=T0, end=T0 + 7200) == st.usage_rows(now, start=T0, end=T0 + 7200)
    assert back.ledger.tokens_this_month("acme", now) == st.ledger.tokens_this_month("acme", now) == 3 * 250
    assert back.in_flight("acme") == 1
    for name in ("acme",):
        a, b = st.tenants[name], back.tenants[name]
        assert (a.requests, a.tokens) == (b.requests, b.tokens)
    # the restored lease settles as the original would, and new lease ids do not collide
    back.settle(Settlement(lease, "acme", "m", 10, 0, 10), now)
    assert back.in_flight("acme") == 0
    assert back.admit("acme", LIMITS, 1, 1, now).lease not in {lease}


def test_restored_limits_and_budget_still_bite():
    st, _ = busy_state()
    st.admit("acme", LIMITS, 1, 1, T0 + 3 * 3600)  # the second concurrency slot
    back = checkpoint.decode(checkpoint.encode(st))
    refused = back.admit("acme", LIMITS, 1, 1, T0 + 3 * 3600)
    assert (refused.allowed, refused.reason) == (False, "concurrency")
    spent = TenancyState()
    spent.settle(Settlement(None, "acme", "m", 4000, 0, 1000), T0)
    refused = checkpoint.decode(checkpoint.encode(spent)).admit("acme", LIMITS, 1, 1, T0 + 60)
    assert (refused.allowed, refused.reason) == (False, "budget")


def test_format_is_versioned_json():
    doc = json.loads(checkpoint.encode(busy_state()[0]))
    assert doc["version"] == checkpoint.VERSION
    assert set(doc) == {"version", "lease_ttl_s", "next_lease_id", "ledger", "tenants"}


@pytest.mark.parametrize("raw, names", [
    (pickle.dumps(TenancyState()), "not JSON"),
    (b'{"version": 99}', "version 99"),
    (b"[1, 2]", "version 'list'"),
    (json.dumps({"version": 1, "lease_ttl_s": 1.0}).encode(), "field next_lease_id"),
])
def test_anything_else_is_refused_by_name(raw, names):
    with pytest.raises(checkpoint.CheckpointError, match=names):
        checkpoint.decode(raw)


def test_wrong_types_are_refused():
    doc = json.loads(checkpoint.encode(busy_state()[0]))
    doc["ledger"]["totals"][0]["usage"]["requests"] = "3"
    with pytest.raises(checkpoint.CheckpointError, match="ledger.totals.0.usage.requests"):
        checkpoint.decode(json.dumps(doc).encode())
    doc = json.loads(checkpoint.encode(busy_state()[0]))
    doc["tenants"][0]["extra"] = 1
    with pytest.raises(checkpoint.CheckpointError, match="tenants.0.extra"):
        checkpoint.decode(json.dumps(doc).encode())
