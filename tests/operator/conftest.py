"""Fixtures: an emulated API server over HTTP, a kubeconfig pointing at it, the real operator."""

import kopf
import pytest

from fathom_operator.kube import KubeClient
from support.operator_support import emulated_cluster, write_kubeconfig


@pytest.fixture
async def cluster(tmp_path, monkeypatch):
    async with emulated_cluster() as api:
        write_kubeconfig(tmp_path / "kubeconfig", str(api.url).rstrip("/"))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        yield api


@pytest.fixture
async def kubectl(cluster):
    """A plain API client on the emulator (what kubectl would do)."""
    client = KubeClient(kopf.ConnectionInfo(server=str(cluster.url).rstrip("/")))
    yield client
    await client.close()
