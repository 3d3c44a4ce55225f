"""Admission at the ingress: who is calling (401), may they use this model (403), are they
within their limits and budget (429), and what did it cost (settlement, /v1/usage).

`TenancyGate` is what `fathom.serve.frontend.Frontend` calls:

    tenant = gate.authenticate(headers.get("authorization"))      # before the body is read
    grant = await gate.admit(tenant, kind, req)                    # after it is validated
    ... backend call with grant.context (priority, fairness key, weight, cache salt, cap) ...
    gate.settle(grant, prompt, cached, completion)                 # or gate.release(grant)

Errors are `fathom.api.openai_error.APIError`s (OpenAI's error JSON) carrying the x-ratelimit-*
and Retry-After headers. The prompt is not tokenised here (the model replica owns the
tokenizer): the token reservation uses the prompt's UTF-8 byte count, an upper bound for
byte-level BPE, and the settlement corrects it to the real counts.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass

from fathom.api.openai_error import APIError
from fathom.tenancy.limits import LimitDecision
from fathom.tenancy.state import Settlement, TenancyState
from fathom.tenancy.tenant_policy import TenantPolicy

UNBOUNDED_MAX_TOKENS = 1 << 20  # reservation when max_tokens is unset (capped by the TPM limit)


class TenancyError(APIError):
    """An APIError with extra response headers (x-ratelimit-*)."""

    def __init__(self, status: int, message: str, *, extra_headers: Mapping[str, str] | None = None, **kw):
        super().__init__(status, message, **kw)
        self.extra_headers = dict(extra_headers or {})

    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, **super().headers()}

    def __reduce__(self):
        return (_rebuild, (self.status, self.message, self.param, self.code, self.retry_after, self.extra_headers))


def _rebuild(status, message, param, code, retry_after, extra_headers) -> "TenancyError":
    return TenancyError(status, message, param=param, code=code, retry_after=retry_after,
                        extra_headers=extra_headers)


@dataclass(frozen=True)
class RequestTenancy:
    """What the model replica needs to know of the caller; travels with the request."""

    tenant: str
    priority: int  # the engine's convention: lower runs first (= -priorityClass)
    weight: float
    cache_salt: str
    max_total_tokens: int | None = None  # prompt + completion cap (maxTokensPerRequest)
    lease: str | None = None  # the admission; a replica settles it when the client went away

    def engine_kwargs(self) -> dict:
        """Keyword arguments of `AsyncEngine.generate`."""
        return {"priority": self.priority, "fairness_key": self.tenant, "cache_salt": self.cache_salt}


@dataclass(frozen=True)
class Grant:
    """An admitted request: its tenant, lease (settle exactly once) and response headers.
    `context` is None in open mode (the model replica then uses its own defaults)."""

    tenant: TenantPolicy
    model: str
    lease: str | None
    context: RequestTenancy | None
    headers: dict[str, str]


REFUSALS = {  # LimitDecision.reason -> (OpenAI-style code, status)
    "requests": ("rate_limit_exceeded", 429),
    "tokens": ("rate_limit_exceeded", 429),
    "concurrency": ("rate_limit_exceeded", 429),
    "budget": ("insufficient_quota", 429),
}


def estimate_prompt_tokens(kind: str, req) -> int:
    """Upper bound of the prompt's tokens without the tokenizer: UTF-8 bytes (token ids as is)."""
    if kind == "chat":
        return sum(len(m.text().encode("utf-8")) + 8 for m in req.messages)
    return sum(len(p.encode("utf-8")) if isinstance(p, str) else len(p) for p in req.prompts())


def engine_sequences(kind: str, req) -> int:
    """Engine sequences a request starts: prompts × n (what limits count)."""
    return req.n * (1 if kind == "chat" else len(req.prompts()))


def completion_reservation(kind: str, req) -> int:
    prompts = 1 if kind == "chat" else len(req.prompts())
    return (req.max_new_tokens() or UNBOUNDED_MAX_TOKENS) * req.n * prompts


class LocalTenancyClient:
    """In-process shared state, for a single ingress process (tests, Ray not initialised)."""

    def __init__(self, state: TenancyState | None = None):
        self.state = state or TenancyState()

    async def admit(self, tenant: TenantPolicy, prompt_tokens: int, max_tokens: int,
                    sequences: int = 1) -> LimitDecision:
        return self.state.admit(tenant.name, tenant.limits, prompt_tokens, max_tokens, time.time(), sequences)

    def settle(self, settlement: Settlement) -> None:
        self.state.settle(settlement, time.time())

    async def usage(self, tenant: str | None = None, start: float | None = None, end: float | None = None,
                    hourly: bool = False):
        return self.state.usage_rows(time.time(), tenant, start, end, hourly)
