"""apply() and the client against the emulated API server: optimistic concurrency and idempotence over HTTP."""

import os

import kopf

from fathom_operator import kube
from fathom_operator.apply import apply
from fathom_operator.kube import Conflict, KubeClient
from support.operator_support import emulated_cluster


def service(port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "ns", "labels": {"a": "1"}},
            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": port}]}}


class RacingClient(KubeClient):
    """Another writer slips in between our read and our patch, once."""

    def __init__(self, info, other: KubeClient):
        super().__init__(info)
        self.other, self.raced, self.conflicts = other, False, 0

    async def patch(self, ref, namespace, name, body, sub=None):
        if not self.raced:
            self.raced = True
            await self.other.patch(ref, namespace, name, {"metadata": {"labels": {"team": "search"}}})
        try:
            return await super().patch(ref, namespace, name, body, sub)
        except Conflict:
            self.conflicts += 1
            raise


async def test_stale_write_is_refused_and_retried_without_losing_the_other_writer():
    async with emulated_cluster() as api:
        info = kopf.ConnectionInfo(server=str(api.url).rstrip("/"))
        other = KubeClient(info)
        ours = RacingClient(info, other)
        try:
            _, created = await apply(ours, kube.SERVICES, service(8000))
            assert created
            obj, changed = await apply(ours, kube.SERVICES, service(9000))
            assert changed and ours.conflicts == 1  # first attempt carried a stale resourceVersion
            assert obj["spec"]["ports"][0]["port"] == 9000 and obj["metadata"]["labels"] == {"a": "1", "team": "search"}
            version = obj["metadata"]["resourceVersion"]
            obj, changed = await apply(ours, kube.SERVICES, service(9000))
            assert not changed and obj["metadata"]["resourceVersion"] == version  # idempotent: no write
        finally:
            await ours.close()
            await other.close()


async def test_a_rotated_service_account_token_is_picked_up(tmp_path):
    token = tmp_path / "token"
    token.write_text("first")
    async with emulated_cluster() as api:
        client = KubeClient(kopf.ConnectionInfo(server=str(api.url).rstrip("/"), token="first"), token_file=str(token))
        try:
            await client.get(kube.SERVICES, "ns", "x")
            token.write_text("second")
            os.utime(token, ns=(1, 10**18))  # a new mtime, as the kubelet's atomic swap gives
            await client.get(kube.SERVICES, "ns", "x")
        finally:
            await client.close()
        sent = [r.headers.get("Authorization") for r in api._requests if r.url.path.endswith("/services/x")]
        assert sent == ["Bearer first", "Bearer second"]
