"""Metering survives, on a real Redis (ray.cluster_utils.Cluster):

- with GCS fault tolerance, the tenancy actor's ledger, budgets and limits outlive a killed actor
  and a restarted Ray head (KubeRay's gcsFaultToleranceOptions = RAY_REDIS_ADDRESS on the head,
  its GCS tables under RAY_external_storage_namespace, one per RayCluster);
- with the usage store, usage and budgets also outlive the whole cluster: a KubeRay NewCluster
  upgrade starts a new RayCluster with a new storage namespace, so an empty GCS.
"""

import os
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from fathom.tenancy.actor import ACTOR_NAME, NAMESPACE, tenancy_actor
from fathom.tenancy.state import Settlement
from fathom.tenancy.tenant_policy import Limits
from support.redis_server import free_port

pytestmark = pytest.mark.slow  # about 45 s on 2 cores: two head starts and an actor restart

PLATFORM = str(Path(__file__).resolve().parents[2] / "platform")
ACME = Limits(requests_per_minute=1, monthly_token_budget=1000)
BETA = Limits(max_concurrent_requests=1)


def start_cluster(monkeypatch, redis_address: str, storage_namespace: str) -> tuple[Cluster, dict]:
    """A one-node Ray cluster whose GCS stores its tables in that Redis (GCS fault tolerance)."""
    monkeypatch.setenv("RAY_REDIS_ADDRESS", redis_address)
    monkeypatch.setenv("RAY_external_storage_namespace", storage_namespace)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [PLATFORM, os.environ.get("PYTHONPATH")])))
    head_args = {"num_cpus": 1, "gcs_server_port": free_port(), "include_dashboard": False}
    return Cluster(initialize_head=True, head_node_args=head_args), head_args


@pytest.fixture
def ft_cluster(redis_address, monkeypatch):
    cluster, head_args = start_cluster(monkeypatch, redis_address, "fathom-durability-test")
    yield cluster, head_args
    ray.shutdown()
    cluster.shutdown()


def connect(cluster: Cluster, **store) -> ray.actor.ActorHandle:
    ray.init(address=cluster.address, namespace="durability", log_to_driver=False)
    return tenancy_actor(checkpoint_s=0.0, **store)  # created the first time, found by name afterwards


def call(method, *args, timeout: float = 120.0):
    """`method.remote(*args)`'s result, retried while the actor restarts (ActorUnavailableError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(method.remote(*args), timeout=timeout)
        except ray.exceptions.ActorUnavailableError:
            assert time.monotonic() < deadline, "the tenancy actor did not come back"
            time.sleep(0.2)


def assert_intact(actor) -> None:
    """The month's usage, the acme budget and rate limit, the beta concurrency lease: as left."""
    rows = call(actor.usage)
    assert [(r["tenant"], r["requests"], r["total_tokens"], r["cost"]) for r in rows] == [("acme", 2, 800, 1.0)]
    over_budget = call(actor.admit, "acme", ACME, 300, 0)
    assert (over_budget.allowed, over_budget.reason) == (False, "budget")  # 800 + 300 > 1000
    limited = call(actor.admit, "acme", ACME, 10, 0)
    assert (limited.allowed, limited.reason) == (False, "requests")
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    busy = call(actor.admit, "beta", BETA, 1, 1)
    assert (busy.allowed, busy.reason) == (False, "concurrency")  # its lease is still held


def test_ledger_budgets_and_limits_survive_actor_kill_and_head_restart(ft_cluster):
    cluster, head_args = ft_cluster
    actor = connect(cluster)
    first = ray.get(actor.admit.remote("acme", ACME, 100, 300))
    assert first.allowed
    ray.get(actor.settle.remote([Settlement(first.lease, "acme", "m", 100, 0, 300, cost=0.5),
                                 Settlement(None, "acme", "m", 150, 50, 250, cost=0.5)]))
    held = ray.get(actor.admit.remote("beta", BETA, 1, 1))
    assert held.allowed
    assert_intact(actor)

    ray.kill(actor, no_restart=False)  # Ray restarts it; it restores from the checkpoint
    assert_intact(actor)

    ray.shutdown()
    cluster.remove_node(cluster.head_node)  # the head pod dies: GCS, raylet, every actor on it
    cluster.add_node(**head_args)  # a new head on the same Redis
    actor = connect(cluster)
    assert call(actor.in_flight, "beta") == 1
    assert_intact(actor)
    call(actor.settle, [Settlement(held.lease, "beta", "m", 1, 0, 1)])
    assert call(actor.admit, "beta", BETA, 1, 1).allowed  # the restored lease released its slot
    assert ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)


def test_usage_and_budgets_outlive_the_cluster_with_the_usage_store(redis_address, monkeypatch):
    store = {"usage_store": f"redis://{redis_address}/0", "usage_key": "fathom/serving/deepseek"}
    old, _ = start_cluster(monkeypatch, redis_address, "raycluster-old")
    try:
        actor = connect(old, **store)
        call(actor.settle, [Settlement(None, "acme", "m", 400, 0, 400, cost=1.0)])
    finally:
        ray.shutdown()
        old.shutdown()  # the old RayCluster is deleted after the upgrade: its GCS tables are gone
    new, _ = start_cluster(monkeypatch, redis_address, "raycluster-new")
    try:
        actor = connect(new, **store)
        rows = call(actor.usage)
        assert [(r["tenant"], r["requests"], r["total_tokens"], r["cost"]) for r in rows] == [("acme", 1, 800, 1.0)]
        over_budget = call(actor.admit, "acme", ACME, 300, 0)
        assert (over_budget.allowed, over_budget.reason) == (False, "budget")
    finally:
        ray.shutdown()
        new.shutdown()
