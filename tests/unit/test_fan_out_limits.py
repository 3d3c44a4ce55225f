"""Issue 12: one HTTP request must not fan out past the limits. The protocol caps choices
(prompts × n), and tenant limits count engine sequences, not HTTP requests."""

import calendar

import pytest
from pydantic import ValidationError

from fathom.serve.protocol import MAX_CHOICES, CompletionRequest
from fathom.tenancy.admission import engine_sequences
from fathom.tenancy.state import Settlement, TenancyState
from fathom.tenancy.tenant_policy import Limits

T0 = calendar.timegm((2026, 12, 3, 12, 0, 0))


def test_prompt_lists_times_n_are_capped():
    with pytest.raises(ValidationError, match="choices"):
        CompletionRequest.model_validate({"model": "m", "prompt": [[7]] * 16, "n": 16})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": [[7]] * 2000, "n": 16})
    ok = CompletionRequest.model_validate({"model": "m", "prompt": [[7]] * 8, "n": 16})
    assert ok.num_choices() == MAX_CHOICES == engine_sequences("completion", ok)


def test_concurrency_counts_sequences_not_requests():
    st, lim = TenancyState(), Limits(max_concurrent_requests=8)
    a = st.admit("t", lim, 1, 1, T0, sequences=6)
    assert a.allowed
    d = st.admit("t", lim, 1, 1, T0, sequences=4)
    assert (d.allowed, d.reason, d.retry_after) == (False, "concurrency", 1.0)
    never = st.admit("t", lim, 1, 1, T0, sequences=9)
    assert (never.allowed, never.retry_after) == (False, None) and "at most 8" in never.message
    st.settle(Settlement(a.lease, "t", "m", 1, 0, 1), T0)
    assert st.admit("t", lim, 1, 1, T0, sequences=8).allowed


def test_requests_per_minute_counts_sequences():
    st, lim = TenancyState(), Limits(requests_per_minute=10)
    assert st.admit("t", lim, 1, 1, T0, sequences=8).allowed
    d = st.admit("t", lim, 1, 1, T0, sequences=4)
    assert (d.allowed, d.reason) == (False, "requests")
    assert st.admit("t", lim, 1, 1, T0, sequences=11).retry_after is None
