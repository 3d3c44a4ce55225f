"""`TenancyGate`: the ingress's one object for tenancy (see fathom.tenancy.admission for the flow).

Open mode (no tenants configured): every caller is the `default` admin tenant with no
limits; nothing is awaited on the hot path (no admission call), usage is still metered.
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import replace

from fathom.api.engine import Pricing
from fathom.api.openai_error import APIError
from fathom.tenancy import export
from fathom.tenancy.admission import (
    REFUSALS,
    Grant,
    LocalTenancyClient,
    RequestTenancy,
    TenancyError,
    completion_reservation,
    engine_sequences,
    estimate_prompt_tokens,
)
from fathom.tenancy.keys import KeyFile, bearer_key
from fathom.tenancy.metering import cost_of
from fathom.tenancy.registry import TenantSource
from fathom.tenancy.state import Settlement
from fathom.tenancy.tenant_policy import Limits, TenantPolicy

log = logging.getLogger(__name__)

NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
          "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
BAD_KEY = "Incorrect API key provided. You can find your API key with your Fathom administrator."
NOT_ADMIN = "Reading /metrics needs an admin key: the metrics list every tenant's usage."


class TenancyGate:
    def __init__(self, source: TenantSource, client, model: str, pricing: Pricing | None = None,
                 metrics_keys: KeyFile | None = None):
        self.source = source
        self.client = client
        self.model = model
        self.pricing = pricing or Pricing()
        self.metrics_keys = metrics_keys or KeyFile(None)

    @classmethod
    def from_settings(cls, settings) -> "TenancyGate":
        """From ServeSettings: `tenants` file, or the one `api_key_sha256` (neither: open mode);
        the cluster-wide actor when Ray is up (a Serve replica), an in-process state otherwise."""
        import ray

        if ray.is_initialized():
            from fathom.tenancy.actor import TenancyClient, tenancy_actor

            client = TenancyClient(tenancy_actor(usage_store=settings.usage_store, usage_key=settings.usage_key))
        else:
            client = LocalTenancyClient()
        source = (TenantSource.single_key(settings.api_key_sha256) if settings.api_key_sha256
                  else TenantSource(settings.tenants))
        return cls(source, client, settings.model_name, settings.engine.pricing, KeyFile(settings.metrics_key_file))

    @property
    def open(self) -> bool:
        return self.source.current().open

    def authenticate(self, authorization: str | None) -> TenantPolicy:
        """The calling tenant, or 401. The key itself never appears in errors or logs."""
        registry = self.source.current()
        tenant = registry.authenticate(authorization)
        if tenant is None:
            msg = NO_KEY if not authorization else BAD_KEY
            raise APIError(401, msg, code="invalid_api_key")
        return tenant

    def authorize_metrics(self, authorization: str | None) -> None:
        """GET /metrics: open in open mode; with tenants, the operator's scrape key (the
        `metrics_key_file`) or an admin tenant's key, else 401 (no or unknown key) or 403."""
        if self.open:
            return
        key = bearer_key(authorization)
        if key is not None and self.metrics_keys.owner(key) is not None:
            return
        if not self.authenticate(authorization).is_admin:
            raise APIError(403, NOT_ADMIN, code="permission_denied")

    async def admit(self, tenant: TenantPolicy, kind: str, req) -> Grant:
        """403 for a model the tenant may not use; 429 over a limit or budget; else a Grant."""
        model = getattr(req, "model", self.model)
        if not tenant.allows_model(model):
            raise APIError(403, f"Tenant {tenant.name!r} may not use model `{model}`.", param="model",
                           code="model_not_allowed")
        if self.open:  # the model replica keeps its own defaults (request priority, `user`)
            return Grant(tenant, model, None, None, {})
        context = RequestTenancy(tenant.name, -tenant.priority, tenant.weight, tenant.cache_salt,
                                 tenant.limits.max_tokens_per_request)
        if tenant.limits == Limits():
            return Grant(tenant, model, None, context, {})
        try:
            decision = await self.client.admit(tenant, estimate_prompt_tokens(kind, req),
                                               completion_reservation(kind, req), engine_sequences(kind, req))
        except RuntimeError as e:  # TenancyUnavailable: fail closed, the limits cannot be checked
            log.error("admission failed: %s", e)
            raise APIError(503, "Rate-limit state is unavailable; retry shortly.", code="tenancy_unavailable",
                           retry_after=1.0) from None
        if not decision.allowed:
            code, status = REFUSALS[decision.reason]
            headers = decision.response_headers()
            retry_after = float(headers.pop("retry-after", 1))
            raise TenancyError(status, decision.message, code=code, retry_after=retry_after,
                               extra_headers=headers)
        return Grant(tenant, model, decision.lease, replace(context, lease=decision.lease), decision.headers)

    def settle(self, grant: Grant, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        """Meter a finished request and release its lease; returns its cost."""
        cost = cost_of(self.pricing, prompt_tokens, cached_tokens, completion_tokens)
        self.client.settle(Settlement(grant.lease, grant.tenant.name, grant.model, prompt_tokens,
                                      cached_tokens, completion_tokens, cost))
        return cost

    def release(self, grant: Grant) -> None:
        """Release the lease of a request that failed before producing usage (nothing metered)."""
        if grant.lease is not None:
            self.client.settle(Settlement(grant.lease, grant.tenant.name, grant.model, 0, metered=False))

    async def usage(self, tenant: TenantPolicy, query: Mapping[str, str]) -> dict:
        """GET /v1/usage: `start_time`, `end_time` (Unix seconds), `tenant` (admins only for
        other tenants). A user-role tenant sees only its own usage."""
        who, start, end = _scope(tenant, query)
        rows = await self.client.usage(who, start, end)
        return {"object": "list", "tenant": who, "start_time": start, "end_time": end,
                "data": [{"object": "usage", **r} for r in rows], "total": _total(rows)}

    async def usage_export(self, tenant: TenantPolicy, query: Mapping[str, str], fmt: str) -> str:
        """GET /v1/usage?format=csv|jsonl: the same scope, one row per tenant, model and hour
        (fathom.tenancy.export)."""
        who, start, end = _scope(tenant, query)
        return export.render(await self.client.usage(who, start, end, hourly=True), fmt)


def _scope(tenant: TenantPolicy, query: Mapping[str, str]) -> tuple[str | None, float | None, float | None]:
    """(tenant to report, start, end) of a usage query; 400/403 for a bad or forbidden one."""
    start, end = _time_param(query, "start_time"), _time_param(query, "end_time")
    if start is not None and end is not None and start >= end:
        raise APIError(400, "start_time must be before end_time", param="start_time")
    who = query.get("tenant")
    if not tenant.is_admin:
        if who is not None and who != tenant.name:
            raise APIError(403, "A user-role tenant may only read its own usage.", param="tenant",
                           code="permission_denied")
        who = tenant.name
    return who, start, end


def _time_param(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise APIError(400, f"{name} must be a Unix time in seconds, got {raw!r}", param=name)
    return value


def _total(rows: list[dict]) -> dict:
    keys = ("requests", "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "total_tokens", "cost")
    return {k: sum(r[k] for r in rows) for k in keys}
