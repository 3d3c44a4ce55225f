"""sync_model_service against the emulated API server, without kopf."""

import asyncio

import kopf
import yaml

from fathom_operator import kube
from fathom_operator.kube import KubeClient
from fathom_operator.sync import sync_model_service
from support.operator_support import emulated_cluster


def num_replicas(rs: dict) -> int:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]["num_replicas"]


async def test_a_stale_body_never_renders_a_stale_replica_count():
    async with emulated_cluster() as api:
        client = KubeClient(kopf.ConnectionInfo(server=str(api.url).rstrip("/")))
        try:
            ms = {"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
                  "metadata": {"name": "m", "namespace": "ns"},
                  "spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 8}}}
            stale = await client.create(kube.MODEL_SERVICES, "ns", ms)
            await sync_model_service(client, stale)
            assert num_replicas(await client.get(kube.RAY_SERVICES, "ns", "m")) == 1
            # the autoscaler records 5 while a timer still holds the body from before
            await client.patch(kube.MODEL_SERVICES, "ns", "m", {"status": {"desiredReplicas": 5}}, sub="status")
            await asyncio.gather(*(sync_model_service(client, stale) for _ in range(3)))
            rs = await client.get(kube.RAY_SERVICES, "ns", "m")
            assert num_replicas(rs) == 5 and rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 5
            status = (await client.get(kube.MODEL_SERVICES, "ns", "m"))["status"]
            assert status["replicas"] == 5 and status["desiredReplicas"] == 5
        finally:
            await client.close()


async def test_a_foreign_service_or_secret_is_never_patched():
    """Issue 12: an object with our child's name that this operator does not own is left as it
    is, and the owner's status says why (ChildrenOwned False / the Tenant not Ready)."""
    from fathom_operator import render
    from fathom_operator.sync import sync_tenants
    from fathom_operator.tenants import SECRET_NAME

    async with emulated_cluster() as api:
        client = KubeClient(kopf.ConnectionInfo(server=str(api.url).rstrip("/")))
        try:
            svc_name = render.api_service_name(render.Owner("m", "ns", ""))
            foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc_name, "namespace": "ns",
                                                                            "labels": {"team": "theirs"}},
                       "spec": {"ports": [{"name": "db", "port": 5432}], "selector": {"app": "db"}}}
            await client.create(kube.SERVICES, "ns", foreign)
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME, "namespace": "ns"},
                      "stringData": {"x": "theirs"}}
            await client.create(kube.SECRETS, "ns", secret)
            ms = {"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
                  "metadata": {"name": "m", "namespace": "ns"}, "spec": {}}
            await sync_model_service(client, await client.create(kube.MODEL_SERVICES, "ns", ms))
            svc = await client.get(kube.SERVICES, "ns", svc_name)
            assert svc["spec"]["selector"] == {"app": "db"} and svc["metadata"]["labels"] == {"team": "theirs"}
            assert await client.get(kube.RAY_SERVICES, "ns", "m") is not None  # what it owns is still applied
            cond = {c["type"]: c for c in (await client.get(kube.MODEL_SERVICES, "ns", "m"))["status"]["conditions"]}
            assert cond["ChildrenOwned"]["status"] == "False" and svc_name in cond["ChildrenOwned"]["message"]

            tenant = {"apiVersion": "fathom.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t", "namespace": "ns"},
                      "spec": {"apiKeys": [{"sha256": "a" * 64}]}}
            await client.create(kube.TENANTS, "ns", tenant)
            statuses = await sync_tenants(client, "ns")
            assert (await client.get(kube.SECRETS, "ns", SECRET_NAME)).get("stringData", {}).get("x") == "theirs" or \
                "fathom.dev/last-applied" not in ((await client.get(kube.SECRETS, "ns", SECRET_NAME))["metadata"]
                                                  .get("annotations") or {})
            ready = {c["type"]: c for c in statuses["t"]["conditions"]}["Ready"]
            assert ready["status"] == "False" and ready["reason"] == "NotOwned"
        finally:
            await client.close()
