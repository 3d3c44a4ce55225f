"""The two credentials the operator makes, never a value in a rendered object but a Secret:

- the scrape key: one per operator (`--metrics-key-secret NAMESPACE/NAME`, the chart's
  `<release>-metrics-key`), data key `token`. The operator reads it, or creates it with a random
  key when absent, and sends it as `Authorization: Bearer` when its autoscaler reads an app's
  /metrics; the chart's ServiceMonitor sends the same Secret. With tenants on, /metrics answers
  only this key and admin tenants' keys (fathom.tenancy.gate).
- the auth Secret of each ModelService (`<name>-fathom-auth`, owned by it, deleted with it):
  `auth_token`, the Ray cluster's token (KubeRay's `authOptions.secretName` names this Secret and
  KubeRay reads this data key; random, made once, never rotated under running pods), and
  `metrics-key.sha256`, the scrape key's digest (empty without a scrape key), which the ingress
  reads from the mounted Secret (`metricsKeyFile`), refreshed in place by the kubelet.

The plaintext keys are written only to these Secrets' `data` (no last-applied record: `apply`
would copy the data into an annotation).
"""

import base64
import secrets

from fathom.api.tenant import hash_api_key
from fathom_operator import kube, render
from fathom_operator.apply import MANAGED_BY_LABEL, NotOwned, owned
from fathom_operator.kube import Conflict, KubeClient
from fathom_operator.pods import METRICS_DIGEST_KEY, RAY_TOKEN_KEY
from fathom_operator.render import auth_secret_name

SCRAPE_KEY = "token"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(secret: dict, key: str) -> str | None:
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value).decode().strip() if value is not None else None


def parse_ref(ref: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` of the scrape key's Secret; ValueError otherwise."""
    namespace, _, name = ref.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--metrics-key-secret must be NAMESPACE/NAME, got {ref!r}")
    return namespace, name


async def scrape_key(client: KubeClient, ref: str | None) -> str | None:
    """The scrape key in the Secret `ref` (created with a random key when absent); None without a ref."""
    if ref is None:
        return None
    namespace, name = parse_ref(ref)
    for _ in range(3):
        found = await client.get(kube.SECRETS, namespace, name)
        key = _text(found, SCRAPE_KEY) if found is not None else None
        if key:
            return key
        if found is not None:
            raise ValueError(f"Secret {namespace}/{name} has no data key {SCRAPE_KEY!r}")
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/name": "fathom", MANAGED_BY_LABEL: render.MANAGED_BY,
                                        "app.kubernetes.io/component": "metrics-key"}},
                "data": {SCRAPE_KEY: _b64(secrets.token_urlsafe(32))}}
        try:
            await client.create(kube.SECRETS, namespace, body)
        except Conflict:
            continue  # made concurrently: read it
    raise Conflict(409, f"secrets/{namespace}/{name}: could not be read or created")


def auth_secret(owner: render.Owner, observed: dict | None, scrape: str | None) -> dict:
    """The ModelService's auth Secret: the observed Ray token kept (a new one when none), the
    scrape key's digest as it is now."""
    token = (_text(observed, RAY_TOKEN_KEY) if observed is not None else None) or secrets.token_urlsafe(32)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": render.metadata(owner, auth_secret_name(owner)),
            "data": {RAY_TOKEN_KEY: _b64(token), METRICS_DIGEST_KEY: _b64(hash_api_key(scrape) + "\n" if scrape else "")}}


async def ensure_auth_secret(client: KubeClient, owner: render.Owner, scrape: str | None) -> None:
    """Create the auth Secret, or bring its data up to date; NotOwned for someone else's."""
    name = auth_secret_name(owner)
    for _ in range(3):
        observed = await client.get(kube.SECRETS, owner.namespace, name)
        desired = auth_secret(owner, observed, scrape)
        if observed is None:
            try:
                await client.create(kube.SECRETS, owner.namespace, desired)
                return
            except Conflict:
                continue
        if not owned(observed, desired):
            raise NotOwned(f"secrets/{owner.namespace}/{name} exists and is not owned by this operator: left untouched")
        if observed.get("data") == desired["data"]:
            return
        patch = {"metadata": {"resourceVersion": observed["metadata"].get("resourceVersion")},
                 "data": desired["data"]}
        try:
            await client.patch(kube.SECRETS, owner.namespace, name, patch)
            return
        except Conflict:
            continue
    raise Conflict(409, f"secrets/{owner.namespace}/{name}: still conflicting")
