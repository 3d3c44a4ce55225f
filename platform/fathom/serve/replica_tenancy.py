"""Tenancy on the model replica's side: each engine call capped by the tenant's
maxTokensPerRequest, and streams whose client went away metered from here."""

from dataclasses import replace

from fathom.api.openai_error import APIError
from fathom.serve.preprocess import EngineCall
from fathom.tenancy.admission import RequestTenancy
from fathom.tenancy.metering import cost_of
from fathom.tenancy.state import Settlement


def cap_calls(ctx: RequestTenancy, calls: list[EngineCall]) -> list[EngineCall]:
    """Apply maxTokensPerRequest to prepared engine calls: 400 if the prompt alone, or prompt +
    an explicit max_tokens, exceeds it; an unset max_tokens becomes what is left of it."""
    cap = ctx.max_total_tokens
    if cap is None:
        return calls
    out = []
    for call in calls:
        prompt, asked = len(call.prompt_ids), call.params.max_tokens
        if prompt >= cap or (asked is not None and prompt + asked > cap):
            raise APIError(
                400, f"Tenant {ctx.tenant!r} may use at most {cap} tokens per request (prompt + max_tokens); "
                f"this one has {prompt} prompt tokens" + (f" + max_tokens {asked}." if asked else "."),
                param="max_tokens", code="max_tokens_per_request_exceeded",
            )
        if asked is None:
            call = replace(call, params=replace(call.params, max_tokens=cap - prompt))
        out.append(call)
    return out


def replica_tenancy_client(settings):
    """The model replica's client of the shared tenancy state (None without tenants or Ray):
    made at start, as getting the named actor blocks."""
    import ray

    if settings.tenants is None or not ray.is_initialized():
        return None
    from fathom.tenancy.actor import TenancyClient, tenancy_actor

    return TenancyClient(tenancy_actor())


def meter_abandoned(client, pricing, model: str, ctx: RequestTenancy, prompt: int, cached: int,
                    completion: int) -> None:
    """Settle, from the model replica, a stream whose client went away: the ingress never sees
    its usage. `client` (the replica's tenancy client) records it; the ingress's release of the
    same lease is then a no-op, or this one finds the lease released and only meters."""
    if client is None:
        return
    cost = cost_of(pricing, prompt, cached, completion)
    client.settle(Settlement(ctx.lease, ctx.tenant, model, prompt, cached, completion, cost))
