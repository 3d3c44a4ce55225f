"""Status conditions as in the Kubernetes API conventions (metav1.Condition).

`set_condition` keeps `lastTransitionTime` unless the status flips, so reconciling twice writes
nothing new (idempotence), and stamps `observedGeneration` on every condition it sets.
"""

import datetime


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: bool | None, reason: str, message: str,
                  *, generation: int | None, now: str) -> list[dict]:
    """A copy of `conditions` with `type_` set; True/False/None map to "True"/"False"/"Unknown"."""
    value = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in conditions if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now
    new = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        new["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != type_] + [new]


def set_all(conditions: list[dict], values: dict[str, tuple[bool | None, str, str]], *, generation: int | None,
            now: str) -> list[dict]:
    """Set several conditions at once: type → (status, reason, message); order kept stable."""
    out = list(conditions)
    for type_, (status, reason, message) in values.items():
        out = set_condition(out, type_, status, reason, message, generation=generation, now=now)
    order = {t: i for i, t in enumerate(("Ready", "Progressing", "Degraded"))}
    return sorted(out, key=lambda c: order.get(c["type"], len(order)))
