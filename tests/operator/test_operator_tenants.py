"""The real operator against the emulator: Tenants become the Secret the ingress reads."""

import base64
import json

from fathom.api.tenant import hash_api_key
from fathom_operator import kube
from fathom_operator.tenants import SECRET_NAME, read_secret_file
from support.operator_support import eventually, operator_running

NS = "team-space"
PLAINTEXT = "sk-team-a-0123456789"


def tenant(name: str, keys: list[dict], **spec) -> dict:
    return {"apiVersion": "fathom.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name, "namespace": NS},
            "spec": {"apiKeys": keys, **spec}}


def secret(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def live(api, plural: str) -> dict:
    return {name: o.raw for (res, _, name), o in api.objects.items() if res.plural == plural and not o.deleted}


def applied(api) -> dict:
    found = live(api, "secrets").get(SECRET_NAME)
    return {t.name: t for t in read_secret_file(found)} if found else {}


async def test_tenants_render_into_the_ingress_secret(cluster, kubectl):
    await kubectl.create(kube.SECRETS, NS, secret("team-a-key", **{"api-key": PLAINTEXT}))
    async with operator_running("--tenant-resync-seconds", "0.5"):
        await kubectl.create(kube.TENANTS, NS, tenant(
            "team-a", [{"secretKeyRef": {"name": "team-a-key", "key": "api-key"}}], models=["deepseek-v3"],
            weight=2, limits={"requestsPerMinute": 600, "tokensPerMinute": 200000}))
        await kubectl.create(kube.TENANTS, NS, tenant("ops", [{"sha256": hash_api_key("sk-ops")}], role="admin"))
        tenants = await eventually(lambda: len(applied(cluster)) == 2 and applied(cluster))
        assert tenants["team-a"].spec.digests == [hash_api_key(PLAINTEXT)]
        assert tenants["team-a"].spec.limits.requests_per_minute == 600 and tenants["team-a"].spec.weight == 2
        assert tenants["ops"].spec.role == "admin"
        status = (await eventually(lambda: live(cluster, "tenants")["team-a"].get("status", {}).get("phase")
                                   and live(cluster, "tenants")["team-a"]))["status"]
        assert status["phase"] == "Applied" and status["keyCount"] == 1 and status["secretName"] == SECRET_NAME

        # the plaintext key lives only in the user's Secret
        for (res, _, name), obj in cluster.objects.items():
            if not obj.deleted and (res.plural, name) != ("secrets", "team-a-key"):
                text = json.dumps(obj.raw)
                assert PLAINTEXT not in text and base64.b64encode(PLAINTEXT.encode()).decode() not in text, name

        # a broken reference is a clear status; the other tenants stay applied
        await kubectl.create(kube.TENANTS, NS, tenant("team-b", [{"secretKeyRef": {"name": "nope", "key": "k"}}]))
        bad = await eventually(lambda: live(cluster, "tenants")["team-b"].get("status", {}).get("phase") == "Invalid"
                               and live(cluster, "tenants")["team-b"])
        assert "Secret 'nope' not found" in bad["status"]["conditions"][0]["message"]
        assert set(applied(cluster)) == {"team-a", "ops"}

        # limits change and key rotation propagate to the Secret
        await kubectl.patch(kube.TENANTS, NS, "team-a", {"spec": {"limits": {"requestsPerMinute": 60}}})
        await eventually(lambda: applied(cluster)["team-a"].spec.limits.requests_per_minute == 60)
        await kubectl.patch(kube.SECRETS, NS, "team-a-key", {"data": {"api-key": base64.b64encode(b"sk-rotated").decode()}})
        await eventually(lambda: applied(cluster)["team-a"].spec.digests == [hash_api_key("sk-rotated")])

        # deletion goes through the finalizer: the tenant leaves the Secret
        await kubectl.delete(kube.TENANTS, NS, "ops")
        await eventually(lambda: "ops" not in applied(cluster) and "ops" not in live(cluster, "tenants"))
        assert set(applied(cluster)) == {"team-a"}
