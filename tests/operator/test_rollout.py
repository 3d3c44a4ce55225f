"""Rollouts: KubeRay's upgrade strategy from the spec and the installed CRD, in-place vs new-cluster
changes, and rollout progress in the status (pure functions)."""

import copy

import pytest
import yaml
from test_operator_model_service import KUBERAY_CRD

from fathom_operator import render, rollout
from fathom_operator.reconcile import Observed, parse_spec, reconcile

INCREMENTAL = {"strategy": "Incremental", "gatewayClassName": "istio", "maxSurgePercent": 20, "stepSizePercent": 5,
               "intervalSeconds": 30}


@pytest.fixture(scope="module")
def kuberay_crd() -> dict:
    return yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def without_incremental(crd: dict) -> dict:
    """The same CRD as a KubeRay before 1.5 publishes it: no clusterUpgradeOptions."""
    old = copy.deepcopy(crd)
    v1 = next(v for v in old["spec"]["versions"] if v["name"] == "v1")
    del v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeStrategy"]["properties"][
        "clusterUpgradeOptions"]
    return old


def test_incremental_support_is_read_from_the_installed_crd(kuberay_crd):
    assert rollout.supports_incremental(kuberay_crd)
    assert not rollout.supports_incremental(without_incremental(kuberay_crd))
    assert not rollout.supports_incremental(None)


def test_strategy_honours_the_spec_where_kuberay_can():
    spec = parse_spec({"upgrade": INCREMENTAL})
    assert rollout.strategy(spec, True) == ({"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {
        "gatewayClassName": "istio", "maxSurgePercent": 20, "stepSizePercent": 5, "intervalSeconds": 30}}, None)
    fallback, warning = rollout.strategy(spec, False)
    assert fallback == {"type": "NewCluster"} and "KubeRay >= 1.5.1" in warning
    assert rollout.strategy(parse_spec({}), True) == ({"type": "NewCluster"}, None)  # the safe default


@pytest.mark.parametrize("bad, says", [
    ({"strategy": "Incremental"}, "needs upgrade.gatewayClassName"),
    ({**INCREMENTAL, "stepSizePercent": 50}, "exceeds maxSurgePercent"),
])
def test_incomplete_incremental_is_an_invalid_spec(bad, says):
    assert says in parse_spec({"upgrade": bad})


@pytest.mark.parametrize("change, expected", [
    ({"engine": {"tensorParallelSize": 4, "maxNumSeqs": 200}}, "InPlace"),  # Serve config only
    ({"autoscaling": {"coldStartTimeoutSeconds": 30}}, "InPlace"),
    ({"image": "fathom:next"}, "NewCluster"),
    ({"env": {"X": "1"}}, "NewCluster"),
    ({"engine": {"tensorParallelSize": 8}}, "NewCluster"),  # another pod shape
    ({}, None),
])
def test_which_changes_need_new_pods(change, expected):
    owner = render.Owner("m", "ns", "u")
    before = render.ray_service(parse_spec({"engine": {"tensorParallelSize": 4}}), owner, 2)
    after = render.ray_service(parse_spec({"engine": {"tensorParallelSize": 4}, **change}), owner, 2)
    assert rollout.kind(before, after) == expected
    assert rollout.kind(before, render.ray_service(parse_spec({"engine": {"tensorParallelSize": 4}}), owner, 5)) \
        == "InPlace"  # scaling


def test_status_reports_a_rollout_in_flight():
    obj = {"metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 2},
           "spec": {"autoscaling": {"enabled": False}, "replicas": 1, "upgrade": INCREMENTAL}}
    running = {"applicationStatuses": {"fathom": {"status": "RUNNING"}}, "rayClusterStatus": {"readyWorkerReplicas": 1}}
    pending = {"rayClusterName": "m-x7k2p", "targetCapacity": 40, "trafficRoutedPercent": 20,
               "applicationStatuses": {"fathom": {"status": "RUNNING"}}}
    rs = {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "activeServiceStatus": running,
                                                    "pendingServiceStatus": pending}}
    status = reconcile(obj, Observed(rs, now="2026-01-01T00:00:00Z", incremental_upgrades=True)).status
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "IncrementalUpgrade")
    assert "capacity 40%, traffic 20%" in progressing["message"]
    assert status["phase"] == "Ready" and status["upgradeStrategy"] == "NewClusterWithIncrementalUpgrade"
    del pending["targetCapacity"], pending["trafficRoutedPercent"]
    status = reconcile(obj, Observed(rs, now="2026-01-01T00:00:00Z")).status
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewClusterUpgrade" and status["upgradeStrategy"] == "NewCluster"
