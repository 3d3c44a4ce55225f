"""The shared tenancy state as one named Ray actor, and the ingress-side client.

Every ingress replica, on every node, gets the same actor by name (`fathom-tenancy` in the
`fathom` namespace), created on first use with `get_if_exists`. It is detached so that it
outlives the replica that happened to create it: usage and limits survive ingress replica
restarts and scale-downs. The hot path is one actor call per admission and one per
settlement, and settlements finishing in the same event-loop iteration share one call.
Actor methods are synchronous, so the actor runs one at a time and needs no locks.
"""

import asyncio
import logging
import time

import ray

from fathom.tenancy.limits import Decision
from fathom.tenancy.metering import UsageLedger
from fathom.tenancy.policy import Limits, TenantPolicy
from fathom.tenancy.state import Settlement, TenancyState

log = logging.getLogger(__name__)

ACTOR_NAME = "fathom-tenancy"
NAMESPACE = "fathom"


class TenancyActor:
    """Ray actor around `TenancyState` with the wall clock."""

    def __init__(self, fine_width_s: int = 60, lease_ttl_s: float = 3600.0):
        self.state = TenancyState(UsageLedger(fine_width_s=fine_width_s), lease_ttl_s=lease_ttl_s)

    def admit(self, tenant: str, limits: Limits, prompt_tokens: int, max_tokens: int) -> Decision:
        return self.state.admit(tenant, limits, prompt_tokens, max_tokens, time.time())

    def settle(self, settlements: list[Settlement]) -> None:
        self.state.settle_many(settlements, time.time())

    def usage(self, tenant: str | None = None, start: float | None = None, end: float | None = None) -> list[dict]:
        """Usage rows `{tenant, model, requests, prompt_tokens, ..., cost}` sorted by tenant, model."""
        return self.state.usage_rows(time.time(), tenant, start, end)

    def in_flight(self, tenant: str) -> int:
        return self.state.in_flight(tenant)


def tenancy_actor(
    name: str = ACTOR_NAME, namespace: str = NAMESPACE, detached: bool = True, **kwargs
) -> "ray.actor.ActorHandle":
    """The named tenancy actor, created if it does not exist yet (ray must be initialised).

    `kwargs` go to `TenancyActor.__init__` and only matter for the call that creates it.
    """
    options = {"name": name, "namespace": namespace, "get_if_exists": True, "num_cpus": 0, "max_restarts": -1}
    if detached:
        options["lifetime"] = "detached"
    return ray.remote(TenancyActor).options(**options).remote(**kwargs)


class TenancyClient:
    """What an ingress replica uses: admit before a request, settle after, query usage."""

    def __init__(self, handle: "ray.actor.ActorHandle"):
        self.handle = handle
        self._batch: list[Settlement] = []

    async def admit(self, tenant: TenantPolicy, prompt_tokens: int, max_tokens: int) -> Decision:
        return await self.handle.admit.remote(tenant.name, tenant.limits, prompt_tokens, max_tokens)

    def settle(self, settlement: Settlement) -> None:
        """Queue a settlement; it is sent (with any others queued meanwhile) on the next loop turn."""
        if not self._batch:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: send now
                self._batch.append(settlement)
                self.flush()
                return
        self._batch.append(settlement)

    def flush(self) -> None:
        """Send queued settlements now (fire and forget; the actor applies them in order)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        ref = self.handle.settle.remote(batch)
        ref.future().add_done_callback(_log_failure)

    async def usage(self, tenant: str | None = None, start: float | None = None, end: float | None = None):
        self.flush()  # this replica's own settlements come first
        return await self.handle.usage.remote(tenant, start, end)


def _log_failure(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("Usage settlement lost: %s", fut.exception())
