import calendar

import pytest

from fathom.api.engine import Pricing
from fathom.tenancy.metering import UsageLedger, UsageTotals, cost_of
from fathom.tenancy.state import Settlement, TenancyState, seconds_to_next_month
from fathom.tenancy.tenant_policy import Limits

T0 = calendar.timegm((2026, 11, 29, 12, 0, 0))


def settle(st, d, prompt, completion, now, cached=0, model="m", tenant="a"):
    st.settle(Settlement(d.lease, tenant, model, prompt, cached, completion), now)


def test_requests_per_minute_refuses_then_recovers():
    st, lim = TenancyState(), Limits(requests_per_minute=2)
    assert st.admit("a", lim, 1, 1, T0).allowed
    assert st.admit("a", lim, 1, 1, T0).allowed
    d = st.admit("a", lim, 1, 1, T0)
    assert (d.allowed, d.reason) == (False, "requests")
    assert d.retry_after == pytest.approx(30.0)
    assert d.headers["x-ratelimit-remaining-requests"] == "0"
    assert st.admit("a", lim, 1, 1, T0 + 30).allowed
    assert st.admit("b", lim, 1, 1, T0).allowed  # other tenants have their own buckets


def test_tokens_reserved_up_front_and_settled_to_real_counts():
    st, lim = TenancyState(), Limits(tokens_per_minute=1000)
    d1 = st.admit("a", lim, prompt_tokens=100, max_tokens=500, now=T0)
    assert d1.headers["x-ratelimit-remaining-tokens"] == "400"
    d2 = st.admit("a", lim, prompt_tokens=100, max_tokens=400, now=T0)
    assert (d2.allowed, d2.reason) == (False, "tokens")
    settle(st, d1, 100, 20, T0)  # used 120 of 600 reserved: 480 come back
    d3 = st.admit("a", lim, prompt_tokens=100, max_tokens=400, now=T0)
    assert d3.allowed and d3.headers["x-ratelimit-remaining-tokens"] == "380"


def test_reservation_capped_at_capacity_and_overuse_becomes_debt():
    st, lim = TenancyState(), Limits(tokens_per_minute=100)
    d = st.admit("a", lim, prompt_tokens=10, max_tokens=10_000, now=T0)
    assert d.allowed and d.headers["x-ratelimit-remaining-tokens"] == "0"
    settle(st, d, 150, 50, T0)  # 200 used with 100 per minute: 100 tokens of debt
    refused = st.admit("a", lim, prompt_tokens=1, max_tokens=1, now=T0 + 30)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    assert refused.retry_after == pytest.approx(52 * 0.6)  # from -50 (after 30 s) to 2, at 100/60 per s


def test_concurrency_slot_released_at_settle():
    st, lim = TenancyState(), Limits(max_concurrent_requests=1)
    d = st.admit("a", lim, 1, 1, T0)
    refused = st.admit("a", lim, 1, 1, T0)
    assert (refused.allowed, refused.reason, refused.retry_after) == (False, "concurrency", 1.0)
    settle(st, d, 1, 1, T0)
    assert st.admit("a", lim, 1, 1, T0).allowed


def test_lost_lease_expires():
    st, lim = TenancyState(lease_ttl_s=60), Limits(max_concurrent_requests=1)
    st.admit("a", lim, 1, 1, T0)
    assert not st.admit("a", lim, 1, 1, T0 + 30).allowed
    assert st.admit("a", lim, 1, 1, T0 + 61).allowed


def test_monthly_budget_counts_settled_usage_and_renews_next_month():
    st, lim = TenancyState(), Limits(monthly_token_budget=1000)
    d = st.admit("a", lim, 100, 800, T0)
    assert st.admit("a", lim, 200, 10, T0).allowed  # in flight does not count yet
    settle(st, d, 100, 800, T0)
    refused = st.admit("a", lim, 200, 10, T0)
    assert (refused.allowed, refused.reason) == (False, "budget")
    assert refused.retry_after == pytest.approx(seconds_to_next_month(T0))
    assert st.admit("a", lim, 50, 10, T0).allowed
    dec1 = calendar.timegm((2026, 12, 1, 0, 0, 1))
    assert seconds_to_next_month(T0) == pytest.approx(dec1 - 1 - T0)
    assert st.admit("a", lim, 200, 10, dec1).allowed


def test_limit_change_applies_to_existing_bucket():
    st = TenancyState()
    assert st.admit("a", Limits(requests_per_minute=100), 1, 1, T0).allowed
    assert st.admit("a", Limits(requests_per_minute=1), 1, 1, T0).allowed  # level clamped to 1
    d = st.admit("a", Limits(requests_per_minute=1), 1, 1, T0)
    assert not d.allowed and d.headers["x-ratelimit-limit-requests"] == "1"


def test_cost_uses_cached_price_for_cached_prompt_tokens():
    p = Pricing(prompt_per_million=2.0, cached_prompt_per_million=0.5, completion_per_million=8.0)
    assert cost_of(p, 1_000_000, 400_000, 500_000) == pytest.approx(0.6 * 2 + 0.4 * 0.5 + 0.5 * 8)
    assert cost_of(Pricing(), 10, 0, 10) == 0.0


def test_ledger_time_window_and_tenant_filter():
    led = UsageLedger(fine_width_s=1)
    led.record("a", "m", UsageTotals(1, 10, 2, 5, 0.1), T0)
    led.record("a", "m2", UsageTotals(1, 1, 0, 1, 0.0), T0 + 5)
    led.record("b", "m", UsageTotals(1, 7, 0, 3, 0.2), T0 + 10)
    assert set(led.query(T0 + 20)) == {("a", "m"), ("a", "m2"), ("b", "m")}
    assert led.query(T0 + 20, tenant="a", start=T0, end=T0 + 6)[("a", "m2")].requests == 1
    assert set(led.query(T0 + 20, start=T0 + 1, end=T0 + 11)) == {("a", "m2"), ("b", "m")}
    assert led.query(T0 + 20, tenant="b", start=T0, end=T0 + 9) == {}
    tot = led.query(T0 + 20, tenant="a")[("a", "m")]
    assert tot.to_dict() == {"requests": 1, "prompt_tokens": 10, "cached_prompt_tokens": 2,
                             "completion_tokens": 5, "cost": 0.1, "total_tokens": 15}


def test_ledger_long_windows_use_the_coarse_tier():
    led = UsageLedger(fine_width_s=60, fine_retention_s=3600, coarse_width_s=3600)
    led.record("a", "m", UsageTotals(1, 10, 0, 5), T0)
    later = T0 + 5 * 3600
    assert led.query(later, start=T0 - 3600, end=later)[("a", "m")].prompt_tokens == 10
    led.record("a", "m", UsageTotals(1, 1, 0, 1), later)
    assert list(led.fine.buckets) == [later // 60 * 60]  # fine buckets past retention were dropped
