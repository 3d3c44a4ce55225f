"""Tenants of a namespace → the Secret the ingress reads (pure).

The Secret `fathom-tenants` holds one key, `tenants.yaml`: a YAML stream of `TenantManifest`s in
the `--tenants FILE` format, every key as `{sha256: …}`. A `secretKeyRef` is resolved by reading
the referenced Secret and hashing the value; the plaintext goes nowhere else. The ModelService
pods mount this Secret; the kubelet refreshes the file in place, so changes reach the ingress
without restarting model replicas. A Tenant that cannot be applied (bad spec, missing Secret or
key) is left out and gets an Invalid status naming the problem; the others are unaffected.
"""

import base64
from dataclasses import dataclass

import yaml
from pydantic import ValidationError

from fathom.api.tenant import ApiKey, ObjectMeta, TenantManifest, TenantSpec, hash_api_key
from fathom_operator.conditions import set_all
from fathom_operator.reconcile import describe_error

SECRET_NAME = "fathom-tenants"
SECRET_KEY = "tenants.yaml"


@dataclass(frozen=True)
class Rendered:
    secret: dict
    statuses: dict[str, dict]  # tenant name → status to write


class UnresolvedKey(ValueError):
    """A secretKeyRef that cannot be resolved."""


def resolve_key(key: ApiKey, secrets: dict[str, dict], where: str) -> str:
    """The SHA-256 hex digest of one API key, reading the referenced Secret if needed."""
    if key.sha256 is not None:
        return key.sha256
    ref = key.secret_key_ref
    secret = secrets.get(ref.name)
    if secret is None:
        raise UnresolvedKey(f"{where}: Secret {ref.name!r} not found")
    data = secret.get("data") or {}
    if ref.key in data:
        plaintext = base64.b64decode(data[ref.key]).decode().strip()
    elif ref.key in (secret.get("stringData") or {}):
        plaintext = secret["stringData"][ref.key].strip()
    else:
        raise UnresolvedKey(f"{where}: Secret {ref.name!r} has no key {ref.key!r}")
    if not plaintext:
        raise UnresolvedKey(f"{where}: Secret {ref.name!r} key {ref.key!r} is empty")
    return hash_api_key(plaintext)


def resolve_tenant(obj: dict, secrets: dict[str, dict]) -> TenantManifest:
    """The tenant as it goes into the file: validated, keys as digests only; raises ValueError."""
    try:
        spec = TenantSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        raise ValueError("; ".join(describe_error(e) for e in exc.errors())) from None
    digests = [resolve_key(k, secrets, f"spec.apiKeys[{i}]") for i, k in enumerate(spec.api_keys)]
    hashed = spec.model_copy(update={"api_keys": [ApiKey(sha256=d) for d in digests]})
    return TenantManifest(metadata=ObjectMeta(name=obj["metadata"]["name"]), spec=hashed)


def render_secret(namespace: str, tenants: list[dict], secrets: dict[str, dict], *, now: str) -> Rendered:
    """The tenants Secret for `namespace` and each Tenant's new status."""
    applied: list[TenantManifest] = []
    statuses: dict[str, dict] = {}
    owners: dict[str, str] = {}  # key digest -> the tenant it authenticates
    for obj in sorted(tenants, key=lambda o: o["metadata"]["name"]):
        name, generation = obj["metadata"]["name"], obj["metadata"].get("generation")
        old = obj.get("status") or {}
        try:
            manifest = resolve_tenant(obj, secrets)
            shared = sorted({owners[d] for d in manifest.spec.digests if d in owners})
            if shared:  # one key must name one tenant; the first by name keeps it
                raise ValueError(f"an API key of this tenant is already a key of tenant {shared[0]!r}")
        except ValueError as exc:
            statuses[name] = _tenant_status(old, generation, now, "Invalid", (False, "InvalidSpec", str(exc)), None)
            continue
        owners.update(dict.fromkeys(manifest.spec.digests, name))
        applied.append(manifest)
        msg = f"{len(manifest.spec.api_keys)} key(s) and limits in Secret {SECRET_NAME}"
        statuses[name] = _tenant_status(old, generation, now, "Applied", (True, "Applied", msg),
                                        len(manifest.spec.api_keys))
    text = "".join("---\n" + yaml.safe_dump(m.to_wire(), sort_keys=False) for m in applied)
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": SECRET_NAME, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "fathom", "app.kubernetes.io/managed-by": "fathom-operator",
                                "app.kubernetes.io/component": "tenants"}},
        "data": {SECRET_KEY: base64.b64encode(text.encode()).decode()},
    }
    return Rendered(secret, statuses)


def read_secret_file(secret: dict) -> list[TenantManifest]:
    """The tenants in a rendered Secret (what the ingress will load)."""
    text = base64.b64decode((secret.get("data") or {}).get(SECRET_KEY, "")).decode()
    return [TenantManifest.model_validate(doc) for doc in yaml.safe_load_all(text) if doc]


def _tenant_status(old: dict, generation, now: str, phase: str, ready: tuple, key_count: int | None) -> dict:
    status = {"phase": phase, "observedGeneration": generation, "secretName": SECRET_NAME, "keyCount": key_count,
              "conditions": set_all(old.get("conditions") or [], {"Ready": (*ready,)}, generation=generation, now=now)}
    unchanged = old.get("phase") == phase and old.get("observedGeneration") == generation and old.get("appliedTime")
    status["appliedTime"] = old["appliedTime"] if unchanged else (now if phase == "Applied" else old.get("appliedTime"))
    return status
