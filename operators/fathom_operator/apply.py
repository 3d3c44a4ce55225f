"""Apply a desired child object without fighting other writers.

Like `kubectl apply`: the fields the operator last wrote are remembered in an annotation, and
the patch (a JSON merge patch) sets only what the operator wants now and removes only what it
wrote before and no longer wants. Fields written by others (KubeRay's defaults, a user's extra
label, an autoscaler) are left alone. Lists of named items (containers, worker groups, ports)
are matched by name so that other writers' items survive the whole-list replacement a merge
patch implies. The patch carries `metadata.resourceVersion`: a concurrent write makes the API
server answer 409 and the apply re-reads and retries. Nothing changed → no request at all.

An existing object that is not ours is never patched (`NotOwned`): ours carries an
ownerReference to the same owner uid as `desired`, or (objects without an owner, like the
tenants Secret) our `app.kubernetes.io/managed-by` label, or (neither asked for) our
last-applied record. Otherwise a ModelService named like
someone's Service or Secret would let the operator rewrite it.
"""

import copy
import json
from typing import Any

from fathom_operator.kube import Conflict, KubeClient, ResourceRef

LAST_APPLIED = "fathom.dev/last-applied"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


class NotOwned(Exception):
    """`desired` names an existing object that this operator does not own; nothing was written."""


def owned(observed: dict, desired: dict) -> bool:
    """Whether `observed` is the object `desired` describes: same owner uid, or our managed-by label."""
    want = {r.get("uid") for r in desired["metadata"].get("ownerReferences") or []}
    if want:
        return bool(want & {r.get("uid") for r in (observed.get("metadata") or {}).get("ownerReferences") or []})
    meta = observed.get("metadata") or {}
    ours = (desired["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL)
    if ours is not None:
        return (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == ours
    return LAST_APPLIED in (meta.get("annotations") or {})  # no marker asked for: one we created
_NAME_KEYS = ("name", "groupName")
_DELETE = object()


def _name(item: Any) -> str | None:
    if isinstance(item, dict):
        return next((f"{k}={item[k]}" for k in _NAME_KEYS if k in item), None)
    return None


def _named(items: list) -> bool:
    return bool(items) and all(_name(i) is not None for i in items)


def merge(observed: Any, last: Any, desired: Any) -> Any:
    """The object after applying `desired` over `observed`, forgetting what only `last` had."""
    if isinstance(desired, dict) and isinstance(observed, dict):
        last = last if isinstance(last, dict) else {}
        out = {k: v for k, v in observed.items() if not (k in last and k not in desired)}
        for key, value in desired.items():
            out[key] = merge(observed.get(key), last.get(key), value) if key in observed else copy.deepcopy(value)
        return out
    if isinstance(desired, list) and isinstance(observed, list) and _named(desired) and _named(observed):
        last_names = {_name(i) for i in last} if isinstance(last, list) else set()
        wanted = {_name(i): i for i in desired}
        prior = {_name(i): i for i in last} if isinstance(last, list) else {}
        out = []
        for item in observed:
            n = _name(item)
            if n in wanted:
                out.append(merge(item, prior.get(n), wanted.pop(n)))
            elif n not in last_names:
                out.append(item)  # someone else's item
        return out + [copy.deepcopy(i) for i in desired if _name(i) in wanted]
    return copy.deepcopy(desired)


def merge_patch(before: dict, after: dict) -> dict:
    """RFC 7386 merge patch turning `before` into `after` ({} when equal)."""
    patch: dict = {}
    for key in before.keys() - after.keys():
        patch[key] = None
    for key, value in after.items():
        if key not in before:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(before[key], dict):
            sub = merge_patch(before[key], value)
            if sub:
                patch[key] = sub
        elif value != before[key]:
            patch[key] = value
    return patch


def _owned(desired: dict) -> dict:
    """The part of `desired` recorded as last applied (everything but status and the record itself)."""
    return {k: v for k, v in desired.items() if k not in ("status",)}


async def apply(client: KubeClient, ref: ResourceRef, desired: dict, *, retries: int = 5) -> tuple[dict, bool]:
    """Create or patch `desired`; returns (object, changed). Retries on 409 with a fresh read."""
    ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    record = json.dumps(_owned(desired), sort_keys=True, separators=(",", ":"))
    wanted = copy.deepcopy(desired)
    wanted["metadata"].setdefault("annotations", {})[LAST_APPLIED] = record
    for _ in range(retries):
        observed = await client.get(ref, ns, name)
        if observed is None:
            try:
                return await client.create(ref, ns, wanted), True
            except Conflict:
                continue  # created concurrently: patch it instead
        if not owned(observed, desired):
            raise NotOwned(f"{ref.plural}/{ns}/{name} exists and is not owned by this operator: left untouched")
        annotations = (observed.get("metadata") or {}).get("annotations") or {}
        last = json.loads(annotations.get(LAST_APPLIED) or "{}")
        target = merge(observed, last, wanted)
        patch = merge_patch(observed, target)
        if not patch:
            return observed, False
        patch.setdefault("metadata", {})["resourceVersion"] = observed["metadata"].get("resourceVersion")
        try:
            return await client.patch(ref, ns, name, patch), True
        except Conflict:
            continue
    raise Conflict(409, f"{ref.plural}/{ns}/{name}: still conflicting after {retries} attempts")
