"""The shared tenancy state as one named Ray actor, and the ingress-side client.

Every ingress replica, on every node, gets the same actor by name (`fathom-tenancy` in the
`fathom` namespace), created on first use with `get_if_exists`. It is detached so that it
outlives the replica that happened to create it: usage and limits survive ingress replica
restarts and scale-downs. The hot path is one actor call per admission and one per
settlement, and those made in the same event-loop iteration share one call.
Actor methods are synchronous, so the actor runs one at a time and needs no locks.
"""

import asyncio
import logging
import time

import ray
from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

from fathom.tenancy import checkpoint
from fathom.tenancy.limits import LimitDecision
from fathom.tenancy.metering import UsageLedger
from fathom.tenancy.state import Settlement, TenancyState
from fathom.tenancy.tenant_policy import Limits, TenantPolicy

log = logging.getLogger(__name__)

ACTOR_NAME = "fathom-tenancy"
NAMESPACE = "fathom"


class TenancyUnavailable(RuntimeError):
    """The shared tenancy actor could not answer an admission."""


class TenancyActor:
    """Ray actor around `TenancyState` with the wall clock.

    The state is checkpointed (`fathom.tenancy.checkpoint`: versioned JSON, never pickle) to
    the cluster's key-value store (GCS) at most every `checkpoint_s` seconds, on the calls that
    change it, and restored when Ray restarts the actor: a crash loses at most that many
    seconds of usage, not the month's bill. With GCS fault tolerance (an external Redis) the
    key-value store, and so the checkpoint, also survives a restart of the Ray head.
    A checkpoint that cannot be restored is kept aside under `<key>.unreadable` and the actor
    starts empty rather than refusing every admission.

    With `usage_store` (`redis://host:port[/db]`) the usage ledger is `RedisLedger` under
    `usage_key` instead: its store of record is outside Ray, so usage and budgets also outlive
    the cluster (a KubeRay NewCluster upgrade); only buckets and leases are checkpointed here.
    """

    def __init__(self, fine_width_s: int = 60, lease_ttl_s: float = 3600.0, checkpoint_s: float = 5.0,
                 checkpoint_key: str = ACTOR_NAME, usage_store: str | None = None, usage_key: str = "fathom"):
        self.checkpoint_s, self.checkpoint_key = checkpoint_s, checkpoint_key
        ledger = _ledger(usage_store, usage_key, fine_width_s)
        self.state = self._restore(ledger) or TenancyState(ledger or UsageLedger(fine_width_s=fine_width_s),
                                                           lease_ttl_s=lease_ttl_s)
        self._saved = time.monotonic()

    def _restore(self, ledger) -> TenancyState | None:
        raw = _internal_kv_get(self.checkpoint_key, namespace=NAMESPACE)
        if not raw:
            return None
        try:
            state = checkpoint.decode(raw, ledger)
        except checkpoint.CheckpointError as e:
            _internal_kv_put(f"{self.checkpoint_key}.unreadable", raw, namespace=NAMESPACE)
            log.error("%s; kept it as %s.unreadable and starting empty", e, self.checkpoint_key)
            return None
        log.warning("Tenancy state restored from its checkpoint (%d bytes)", len(raw))
        return state

    def _changed(self) -> None:
        if time.monotonic() - self._saved >= self.checkpoint_s:
            self.save()

    def save(self) -> None:
        """Write the checkpoint now (also what `_changed` does every `checkpoint_s`)."""
        _internal_kv_put(self.checkpoint_key, checkpoint.encode(self.state), namespace=NAMESPACE)
        self._saved = time.monotonic()

    def admit(self, tenant: str, limits: Limits, prompt_tokens: int, max_tokens: int,
              sequences: int = 1) -> LimitDecision:
        return self.exchange([], [(tenant, limits, prompt_tokens, max_tokens, sequences)])[0]

    def settle(self, settlements: list[Settlement]) -> None:
        self.exchange(settlements, [])

    def exchange(self, settlements: list[Settlement], admissions: list[tuple]) -> list[LimitDecision]:
        """Settle, then admit each `(tenant, limits, prompt_tokens, max_tokens)` in order."""
        now = time.time()
        self.state.settle_many(settlements, now)
        decisions = [self.state.admit(t, lim, p, m, now, sequences=rest[0] if rest else 1)
                     for t, lim, p, m, *rest in admissions]
        self._changed()
        return decisions

    def usage(self, tenant: str | None = None, start: float | None = None, end: float | None = None,
              hourly: bool = False) -> list[dict]:
        """`TenancyState.usage_rows` now."""
        return self.state.usage_rows(time.time(), tenant, start, end, hourly)

    def in_flight(self, tenant: str) -> int:
        return self.state.in_flight(tenant)


def _ledger(usage_store: str | None, usage_key: str, fine_width_s: int):
    """The Redis ledger when a usage store is configured, else None (an in-memory UsageLedger)."""
    if usage_store is None:
        return None
    from fathom.tenancy.redis_ledger import RedisLedger, connect

    return RedisLedger(connect(usage_store), usage_key, fine_width_s=fine_width_s)


def tenancy_actor(
    name: str = ACTOR_NAME, namespace: str = NAMESPACE, detached: bool = True, **kwargs
) -> "ray.actor.ActorHandle":
    """The named tenancy actor, created if it does not exist yet (ray must be initialised).

    `kwargs` go to `TenancyActor.__init__` and only matter for the call that creates it.
    """
    options = {"name": name, "namespace": namespace, "get_if_exists": True, "num_cpus": 0, "max_restarts": -1,
               "enable_task_events": False}  # a call per admission batch: no GCS task events
    if detached:
        options["lifetime"] = "detached"
    return ray.remote(TenancyActor).options(**options).remote(**kwargs)


class TenancyClient:
    """What an ingress replica uses: admit before a request, settle after, query usage.

    Admissions and settlements made in the same event-loop turn travel in one actor call
    (`exchange`): under load one call serves many requests. Settlements are fire and forget
    (Ray runs one caller's calls to an actor in order, so this replica's later usage query sees
    them). An admission whose caller went away meanwhile is released at once, not leaked.
    """

    def __init__(self, handle: "ray.actor.ActorHandle"):
        self.handle = handle
        self._admits: list[tuple[tuple, asyncio.Future]] = []
        self._settles: list[Settlement] = []
        self._scheduled = False

    async def admit(self, tenant: TenantPolicy, prompt_tokens: int, max_tokens: int,
                    sequences: int = 1) -> LimitDecision:
        future = asyncio.get_running_loop().create_future()
        self._admits.append(((tenant.name, tenant.limits, prompt_tokens, max_tokens, sequences), future))
        self._schedule()
        return await future

    def settle(self, settlement: Settlement) -> None:
        """Queue a settlement; it is sent (with whatever else is queued) on the next loop turn."""
        self._settles.append(settlement)
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            asyncio.get_running_loop().call_soon(self.flush)
            self._scheduled = True
        except RuntimeError:  # no running loop: send now
            self.flush()

    def flush(self) -> None:
        """Send what is queued now."""
        self._scheduled = False
        admits, self._admits = self._admits, []
        settles, self._settles = self._settles, []
        if not admits and not settles:
            return
        ref = self.handle.exchange.remote(settles, [args for args, _ in admits])
        if admits:
            asyncio.ensure_future(self._deliver(ref, admits))
        else:
            ref.future().add_done_callback(_log_failure)

    async def _deliver(self, ref, admits: list[tuple[tuple, asyncio.Future]]) -> None:
        try:
            decisions = await ref
        except Exception as e:  # noqa: BLE001 - whatever failed, every waiting admission must hear of it
            for _, future in admits:
                if not future.done():
                    future.set_exception(TenancyUnavailable(f"tenancy state unreachable: {type(e).__name__}"))
            return
        for (args, future), decision in zip(admits, decisions, strict=True):
            if not future.done():
                future.set_result(decision)
            elif decision.allowed:  # the caller went away while waiting: release its slot
                self.settle(Settlement(decision.lease, args[0], "", 0, metered=False))

    async def usage(self, tenant: str | None = None, start: float | None = None, end: float | None = None,
                    hourly: bool = False):
        self.flush()  # this replica's own settlements come first
        return await self.handle.usage.remote(tenant, start, end, hourly)


def _log_failure(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("UsageTotals settlement lost: %s", fut.exception())
