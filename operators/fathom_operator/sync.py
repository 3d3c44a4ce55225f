"""One reconciliation pass against the API server: read, call the pure function, write.

These coroutines are what the kopf handlers run; they are idempotent (a second pass with
nothing changed sends no write) and never raise for an invalid spec (that is a status).
"""

import asyncio
import json
import math
import time

from fathom_operator import credentials, kube, render, rollout
from fathom_operator.apply import LAST_APPLIED, NotOwned, apply, merge_patch
from fathom_operator.conditions import now_rfc3339, set_condition
from fathom_operator.kube import KubeClient, ResourceRef
from fathom_operator.reconcile import Observed, Result, reconcile
from fathom_operator.tenants import render_secret

_REFS = {"RayService": kube.RAY_SERVICES, "Service": kube.SERVICES, "Secret": kube.SECRETS,
         "PersistentVolumeClaim": kube.CLAIMS, "Job": kube.JOBS, "InferencePool": kube.INFERENCE_POOLS}


async def write_status(client: KubeClient, ref: ResourceRef, obj: dict, status: dict) -> bool:
    """Patch `status` of `obj` through the status subresource if it differs; True if written."""
    old = obj.get("status") or {}
    patch = merge_patch({k: v for k, v in old.items() if k != "kopf"}, {k: v for k, v in status.items() if v is not None})
    if not patch:
        return False
    meta = obj["metadata"]
    await client.patch(ref, meta["namespace"], meta["name"], {"status": patch}, sub="status")
    return True


def _lock(*key: str) -> asyncio.Lock:
    """One lock per object and event loop: handlers, timers and the autoscaler of one object
    reconcile one at a time, each from a fresh read, so none re-renders a stale replica count."""
    return _locks.setdefault((id(asyncio.get_running_loop()), *key), asyncio.Lock())


_locks: dict[tuple, asyncio.Lock] = {}


async def sync_model_service(client: KubeClient, obj: dict, notify=None, *, allow_host_path: bool = False,
                             metrics_key_secret: str | None = None) -> Result | None:
    """Reconcile one ModelService: make its auth Secret (fathom_operator.credentials; the scrape
    key's digest from `metrics_key_secret`), apply its RayService and Service, then write its status.

    `obj` names the object; it is re-read under the object's lock. `notify(obj, type, reason,
    message)` is called when the phase turns Invalid or Pending (a Warning Event), so
    `kubectl describe` shows why nothing is deployed. None if the object is gone."""
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    async with _lock("modelservices", ns, name):
        fresh = await client.get(kube.MODEL_SERVICES, ns, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return None
        return await _sync_model_service(client, fresh, notify, allow_host_path, metrics_key_secret)


async def _sync_model_service(client: KubeClient, obj: dict, notify, allow_host_path: bool,
                              metrics_key_secret: str | None) -> Result:
    meta = obj["metadata"]
    ns, name = meta["namespace"], meta["name"]
    installed = await client.has_resource(kube.RAY_SERVICES)
    ray_service = await client.get(kube.RAY_SERVICES, ns, name) if installed else None
    service = await client.get(kube.SERVICES, ns, render.api_service_name(render.Owner(name, ns, "")))
    incremental = installed and await incremental_upgrades(client)
    pools = await client.has_resource(kube.INFERENCE_POOLS)
    now = now_rfc3339()
    result = reconcile(obj, Observed(ray_service, service, installed, now, incremental_upgrades=incremental,
                                     inference_pools=pools, allow_host_path=allow_host_path))
    new_generation = (obj.get("status") or {}).get("observedGeneration") != meta.get("generation")
    foreign = []
    if result.children:  # before the pods that read it
        try:
            scrape = await credentials.scrape_key(client, metrics_key_secret)
            await credentials.ensure_auth_secret(client, render.owner_of_meta(meta), scrape)
        except NotOwned as e:
            foreign.append(str(e))
    for child in result.children or []:
        if child["kind"] == "RayService" and notify is not None and new_generation:
            _announce(obj, rollout.kind(_last_applied(ray_service), child), result.status, notify)
        try:
            await apply(client, _REFS[child["kind"]], child)
        except NotOwned as e:
            foreign.append(str(e))
    if result.children:
        result.status["conditions"] = set_condition(
            result.status.get("conditions") or [], "ChildrenOwned", not foreign,
            "NotOwned" if foreign else "Owned", "; ".join(foreign) or "every child object is owned by this ModelService",
            generation=meta.get("generation"), now=now)
    await write_status(client, kube.MODEL_SERVICES, obj, result.status)
    if foreign and notify is not None:
        notify(obj, "Warning", "NotOwned", "; ".join(foreign))
    old_phase = (obj.get("status") or {}).get("phase")
    if notify is not None and result.status["phase"] in ("Invalid", "Pending") and old_phase != result.status["phase"]:
        ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
        notify(obj, "Warning", ready["reason"], ready["message"])
    if notify is not None and result.warning and new_generation:
        notify(obj, "Warning", "Unsupported", result.warning)
    return result


def _last_applied(ray_service: dict | None) -> dict | None:
    """The RayService as the operator last wrote it (apply's record), without KubeRay's defaults."""
    record = (((ray_service or {}).get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    return json.loads(record) if record else None


def _announce(obj: dict, change: str | None, status: dict, notify) -> None:
    """A `Rollout` Event saying how a spec change reaches the running service."""
    if change == "InPlace":
        notify(obj, "Normal", "Rollout", "Serve config change: applied in place on the running pods")
    elif change == "NewCluster":
        notify(obj, "Normal", "Rollout", f"the pods change: KubeRay rolls out a new cluster ({status['upgradeStrategy']})")


async def incremental_upgrades(client: KubeClient) -> bool:
    """Whether the installed RayService CRD has KubeRay's incremental upgrade (cached 5 minutes)."""
    key = id(asyncio.get_running_loop())
    found, at = _crd_support.get(key, (False, -math.inf))
    if time.monotonic() - at > CRD_RECHECK_S:
        found = rollout.supports_incremental(await client.get_crd(RAY_SERVICE_CRD))
        _crd_support[key] = (found, time.monotonic())
    return found


RAY_SERVICE_CRD = "rayservices.ray.io"
CRD_RECHECK_S = 300.0
_crd_support: dict[int, tuple[bool, float]] = {}


async def sync_tenants(client: KubeClient, namespace: str, *, deleting: str | None = None) -> dict[str, dict]:
    """Rewrite the namespace's tenants Secret from all its Tenants; write each Tenant's status.

    `deleting` names a Tenant being deleted: it is left out of the Secret. Serialised per
    namespace within this process; across processes the apply's resourceVersion check holds.
    """
    async with _lock("tenants", namespace):
        tenants = [t for t in await client.list(kube.TENANTS, namespace) if t["metadata"]["name"] != deleting]
        tenants = [t for t in tenants if not t["metadata"].get("deletionTimestamp")]
        names = {k["secretKeyRef"]["name"] for t in tenants for k in (t.get("spec") or {}).get("apiKeys") or []
                 if isinstance(k, dict) and isinstance(k.get("secretKeyRef"), dict) and k["secretKeyRef"].get("name")}
        secrets = {}
        for secret_name in sorted(names):
            found = await client.get(kube.SECRETS, namespace, secret_name)
            if found is not None:
                secrets[secret_name] = found
        rendered = render_secret(namespace, tenants, secrets, now=now_rfc3339())
        try:
            await apply(client, kube.SECRETS, rendered.secret)
        except NotOwned as e:  # someone's Secret has our name: every Tenant says so, nothing is written
            for statuses in rendered.statuses.values():
                statuses["conditions"] = set_condition(statuses.get("conditions") or [], "Ready", False, "NotOwned",
                                                       str(e), generation=None, now=now_rfc3339())
        for tenant in tenants:
            await write_status(client, kube.TENANTS, tenant, rendered.statuses[tenant["metadata"]["name"]])
        return rendered.statuses
