import hashlib

import pytest

from fathom.tenancy.keys import KeyIndex, bearer_key, digest, normalize_digest
from fathom.tenancy.limits import LimitDecision, TokenBucket, go_duration, ratelimit_headers


def test_digest_is_sha256_hex():
    assert digest("sk-a") == hashlib.sha256(b"sk-a").hexdigest()


def test_key_index_finds_owner_of_every_key_and_nobody_else():
    idx = KeyIndex({digest("k1"): "a", digest("k2"): "a", digest("k3"): "b"})
    assert [idx.owner(k) for k in ("k1", "k2", "k3", "k4", "")] == ["a", "a", "b", None, None]


def test_normalize_digest_rejects_plaintext_without_echoing_it():
    with pytest.raises(ValueError) as e:
        normalize_digest("sk-my-secret-key")
    assert "sk-my-secret-key" not in str(e.value)
    assert normalize_digest("AB" * 32) == "ab" * 32


@pytest.mark.parametrize(
    "header,key",
    [("Bearer sk-1", "sk-1"), ("bearer  sk-1 ", "sk-1"), ("Basic xyz", None), ("Bearer", None), (None, None)],
)
def test_bearer_key(header, key):
    assert bearer_key(header) == key


def test_bucket_refills_at_capacity_per_minute():
    b = TokenBucket.full(60, now=0.0)
    b.take(60)
    assert b.wait(1, now=0.0) == pytest.approx(1.0)
    assert b.wait(1, now=1.0) == 0.0
    assert b.until_full(now=1.0) == pytest.approx(59.0)
    b.refill(now=1000.0)
    assert b.level == 60  # capped


def test_bucket_give_refunds_or_charges():
    b = TokenBucket.full(100, now=0.0)
    b.take(80)
    b.give(30)
    assert b.level == pytest.approx(50)
    b.give(-70)
    assert b.level == pytest.approx(-20)  # used more than reserved: debt repaid by refill
    assert b.wait(10, now=0.0) == pytest.approx(30 / (100 / 60))


def test_resize_keeps_level_within_new_capacity():
    b = TokenBucket.full(100, now=0.0)
    b.resize(10)
    assert (b.capacity, b.level) == (10, 10)


@pytest.mark.parametrize("s,text", [(0.02, "20ms"), (1.5, "1.5s"), (360, "6m0s"), (61.25, "1m1.25s")])
def test_go_duration(s, text):
    assert go_duration(s) == text


def test_headers_follow_openai_names():
    req, tok = TokenBucket.full(10, 0.0), TokenBucket.full(1000, 0.0)
    req.take(1)
    tok.take(400)
    h = ratelimit_headers(req, tok, now=0.0)
    assert h == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "24s",
    }
    assert ratelimit_headers(None, None, 0.0) == {}


def test_refusal_carries_retry_after_in_whole_seconds_and_ms():
    d = LimitDecision(False, reason="requests", retry_after=0.2, headers={"x-ratelimit-limit-requests": "1"})
    h = d.response_headers()
    assert (h["retry-after"], h["retry-after-ms"], h["x-ratelimit-limit-requests"]) == ("1", "200", "1")
    assert "retry-after" not in LimitDecision(True, lease="x").response_headers()
