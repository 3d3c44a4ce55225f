"""Rate limits as token buckets, and the admission decision with OpenAI's rate-limit headers.

A bucket of capacity C refilling at C/60 per second is "C per minute" that tolerates a burst
of C. Requests per minute take 1 from the request bucket; tokens per minute reserve
prompt + max_tokens from the token bucket at admission and settle to the real prompt +
completion count when the request ends (`TokenBucket.give` refunds the difference, or
charges it when the request used more). Pure Python, clock passed in: unit-testable.
"""

import math
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    capacity: float
    level: float
    stamp: float

    @classmethod
    def full(cls, per_minute: int, now: float) -> "TokenBucket":
        return cls(capacity=float(per_minute), level=float(per_minute), stamp=now)

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def resize(self, per_minute: int) -> None:
        """Apply a changed limit, keeping the level (clamped to the new capacity)."""
        self.capacity = float(per_minute)
        self.level = min(self.level, self.capacity)

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 when it can now)."""
        self.refill(now)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give(self, amount: float) -> None:
        """Return `amount` (negative charges more; the level may go below zero)."""
        self.level = min(self.capacity, self.level + amount)

    def until_full(self, now: float) -> float:
        self.refill(now)
        return max(0.0, (self.capacity - self.level) / self.rate)


def go_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{round(secs, 3):g}s"


@dataclass(frozen=True)
class LimitDecision:
    """The outcome of one admission.

    `allowed`: the request may run and must be settled with `lease`. Otherwise `reason`
    (requests, tokens, concurrency, budget) and `message` say why, and
    `retry_after` (seconds) says when a retry may succeed (None: it never will).
    `headers` are the x-ratelimit-* values, returned to the client either way.
    """

    allowed: bool
    lease: str | None = None
    reason: str | None = None
    message: str = ""
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def response_headers(self) -> dict[str, str]:
        """Headers for the HTTP response: x-ratelimit-* and, when refused, Retry-After."""
        out = dict(self.headers)
        if not self.allowed and self.retry_after is not None:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            out["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        return out


def ratelimit_headers(
    requests: TokenBucket | None, tokens: TokenBucket | None, now: float
) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} as OpenAI sends them."""
    out: dict[str, str] = {}
    for kind, bucket in (("requests", requests), ("tokens", tokens)):
        if bucket is None:
            continue
        bucket.refill(now)
        out[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
        out[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.until_full(now))
    return out
