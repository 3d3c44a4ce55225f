"""The chart's RBAC is exactly what the operator really does: run the real operator (kopf)
with the chart's arguments against the emulated API server, drive a ModelService and a Tenant
rendered by the chart through create, update and delete, record every API request it makes,
and require each (API group, resource, verb) to be granted by the chart's roles, and every
grant to be used (but for a documented few this scenario cannot reach)."""

from urllib.parse import parse_qs, urlsplit

import kopf
import pytest

from fathom_operator import kube
from support.helm_value_sets import DEEPSEEK_V3, TEAM_A
from support.operator_support import emulated_cluster, eventually, operator_running, write_kubeconfig

NS = "fathom"
USER_TOKEN = "a-user-not-the-operator"
PREFIXES = {"api", "apis"}
# Grants this scenario does not exercise, and where the operator uses them.
NOT_EXERCISED_HERE = {
    ("", "events", "create"): "the autoscaler's scale events and kopf's handler events",
    ("", "services", "patch"): "repairing a drifted API Service (apply.py)",
    ("", "persistentvolumeclaims", "get"): "a Shared model cache (tests/operator/test_operator_operations.py)",
    ("", "persistentvolumeclaims", "create"): "a Shared model cache",
    ("", "persistentvolumeclaims", "patch"): "a Shared model cache",
    ("batch", "jobs", "get"): "the Job that fills a Shared model cache",
    ("batch", "jobs", "create"): "the Job that fills a Shared model cache",
    ("batch", "jobs", "patch"): "the Job that fills a Shared model cache",
    ("inference.networking.k8s.io", "inferencepools", "get"): "an enabled InferencePool (test_operator_operations.py)",
    ("inference.networking.k8s.io", "inferencepools", "create"): "an enabled InferencePool",
    ("inference.networking.k8s.io", "inferencepools", "patch"): "an enabled InferencePool",
}


def verb_of(method: str, path: str, query: dict) -> tuple[str, str, str] | None:
    """(group, resource[/subresource], verb) of one API request; None for discovery paths."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < (2 if parts[:1] == ["api"] else 3) or parts[0] not in PREFIXES:
        return None  # /api, /apis, /apis/<group>, /version...: discovery
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return None  # /apis/<group>/<version>: discovery, allowed to every authenticated user
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    resource = f"{resource}/{sub}" if sub else resource
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in (["true"], ["1"]) else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
    return group, resource, verb


def granted(objs: list[dict], service_account: str = "fathom") -> set[tuple[str, str, str]]:
    """What the roles bound to `service_account` allow, as (group, resource, verb)."""
    bound = {(b["roleRef"]["kind"], b["metadata"].get("namespace"), b["roleRef"]["name"])
             for b in objs if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
             if any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in b["subjects"])}
    out = set()
    for role in (o for o in objs if (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) in bound):
        for rule in role["rules"]:
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


@pytest.fixture
async def recorded(helm, tmp_path, monkeypatch):
    """Every API request the operator made while handling the chart's ModelService and Tenant."""
    objs = helm.template({"modelServices": [DEEPSEEK_V3], "tenants": [TEAM_A]})
    ms, tenant = (next(o for o in objs if o["kind"] == kind) for kind in ("ModelService", "Tenant"))
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    args = [a for a in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            if not a.startswith(("--liveness", "--resync-seconds", "--tenant-resync-seconds"))]
    args.append("--tenant-resync-seconds=0.5")  # operator_running() sets --resync-seconds 0.5
    async with emulated_cluster() as api:
        write_kubeconfig(tmp_path / "kubeconfig", str(api.url).rstrip("/"))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        # the test acts as a user with its own token, so its requests can be told apart
        client = kube.KubeClient(kopf.ConnectionInfo(server=str(api.url).rstrip("/"), token=USER_TOKEN))
        try:
            await client.create(kube.SECRETS, NS, {"apiVersion": "v1", "kind": "Secret",
                                                   "metadata": {"name": "team-a-keys", "namespace": NS},
                                                   "data": {"current": "c2stYTE=", "next": "c2stYTI="}})
            before = len(api._requests)
            async with operator_running(*args):
                await client.create(kube.MODEL_SERVICES, NS, ms)
                await client.create(kube.TENANTS, NS, tenant)
                await eventually(lambda: _has(api, "rayservices", "deepseek-v3"))
                await eventually(lambda: _has(api, "secrets", "fathom-tenants"))
                await client.patch(kube.MODEL_SERVICES, NS, "deepseek-v3", {"spec": {"image": "fathom:next"}})
                await eventually(lambda: "fathom:next" in str(_obj(api, "rayservices", "deepseek-v3")))
                await client.delete(kube.TENANTS, NS, "team-a")
                await eventually(lambda: not _has(api, "tenants", "team-a"))
            requests = api._requests[before:]
        finally:
            await client.close()
    return objs, [(str(r.method.value if hasattr(r.method, "value") else r.method), str(r.url)) for r in requests
                  if r.headers.get("Authorization") != f"Bearer {USER_TOKEN}"]


def _obj(api, plural: str, name: str) -> dict | None:
    return next((o.raw for (res, _, n), o in api.objects.items()
                 if res.plural == plural and n == name and not o.deleted), None)


def _has(api, plural: str, name: str) -> bool:
    return _obj(api, plural, name) is not None


async def test_chart_rbac_grants_every_request_the_operator_makes(recorded):
    objs, requests = recorded
    used = set()
    for method, url in requests:
        parts = urlsplit(url)
        found = verb_of(method.upper(), parts.path, parse_qs(parts.query))
        if found:
            used.add(found)
    assert ("ray.io", "rayservices", "create") in used and ("", "secrets", "create") in used, used
    missing = used - granted(objs)
    assert not missing, f"the operator made requests the chart's RBAC forbids: {sorted(missing)}"
    unused = granted(objs) - used - set(NOT_EXERCISED_HERE)
    assert not unused, f"the chart grants what the operator never used here: {sorted(unused)}"
