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
