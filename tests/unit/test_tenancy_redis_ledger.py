"""The Redis ledger (on a real redis-server) answers exactly as the in-memory ledger, and two
writers (an old and a new cluster during a NewCluster upgrade) add up instead of overwriting."""

import calendar

import pytest
import redis

from fathom.tenancy.checkpoint import decode, encode
from fathom.tenancy.metering import UsageLedger, UsageTotals
from fathom.tenancy.redis_ledger import RedisLedger
from fathom.tenancy.state import Settlement, TenancyState
from fathom.tenancy.tenant_policy import Limits

T0 = calendar.timegm((2026, 11, 29, 12, 0, 0))
RECORDS = [  # (seconds after T0, tenant, model, usage)
    (5, "acme", "m", UsageTotals(1, 100, 40, 20, 0.5)),
    (70, "acme", "m", UsageTotals(1, 10, 0, 5, 0.125)),
    (3600 + 30, "acme", "other", UsageTotals(1, 7, 0, 3, 1.0)),
    (3 * 86400, "beta", "m", UsageTotals(2, 50, 10, 50, 0.25)),
]


@pytest.fixture
def client(redis_address):
    host, port = redis_address.split(":")
    return redis.Redis(host=host, port=int(port))


def filled(ledger):
    for dt, tenant, model, usage in RECORDS:
        ledger.record(tenant, model, usage, T0 + dt)
    return ledger


@pytest.mark.parametrize("window", [
    (None, None, None), ("acme", None, None), (None, T0 + 3 * 86400 - 60, None),  # minutes: last 2 days
    (None, T0, T0 + 3600), ("acme", T0 + 60, T0 + 120), (None, T0 + 3600, T0 + 4 * 86400),  # hours beyond
])
def test_same_answers_as_the_in_memory_ledger(client, window):
    tenant, start, end = window
    memory, stored = filled(UsageLedger()), filled(RedisLedger(client, "svc"))
    now = T0 + 3 * 86400 + 10
    assert stored.query(now, tenant, start, end) == memory.query(now, tenant, start, end)
    assert stored.hourly(tenant, start, end) == memory.hourly(tenant, start, end)
    assert stored.tokens_this_month("acme", T0) == memory.tokens_this_month("acme", T0) == 145
    assert stored.tokens_this_month("beta", now) == memory.tokens_this_month("beta", now) == 100  # December


def test_two_writers_add_up_and_keys_are_per_service(client):
    old, new = RedisLedger(client, "svc"), RedisLedger(client, "svc")
    for i in range(10):
        (old if i % 2 else new).record("acme", "m", UsageTotals(1, 10, 0, 10, 0.5), T0 + i)
    assert RedisLedger(client, "svc").query(T0 + 20)[("acme", "m")] == UsageTotals(10, 100, 0, 100, 5.0)
    assert RedisLedger(client, "other").query(T0 + 20) == {}


def test_state_on_the_redis_ledger_checkpoints_only_buckets_and_leases(client):
    state = TenancyState(RedisLedger(client, "svc"))
    limits = Limits(monthly_token_budget=100, max_concurrent_requests=1)
    state.settle(Settlement(None, "acme", "m", 60, 0, 30), T0)
    held = state.admit("acme", limits, 5, 0, T0)
    raw = encode(state)
    assert b'"ledger":null' in raw
    back = decode(raw, RedisLedger(client, "svc"))  # a new actor, maybe in a new cluster
    assert back.usage_rows(T0 + 1)[0]["total_tokens"] == 90
    assert back.admit("acme", limits, 5, 0, T0).reason == "concurrency"
    back.settle(Settlement(held.lease, "acme", "m", 5, 0, 1), T0)
    assert back.admit("acme", limits, 5, 0, T0).reason == "budget"  # 96 used + 5 > 100
