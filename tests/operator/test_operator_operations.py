"""Operations on the emulator with the real operator: draining Ray pods, durable state on Redis,
the model cache. Every RayService is checked against KubeRay's published schema, and the other
children against the Kubernetes OpenAPI schemas."""

import contextlib
from pathlib import Path

import jsonschema
import kopf
import kubernetes_validate
import pytest
import yaml
from test_operator_model_service import KUBERAY_CRD, NS, modelservice, objects

from fathom_operator import kube
from support.operator_support import emulated_cluster, eventually, operator_running, write_kubeconfig


@pytest.fixture(scope="module")
def rayservice_schema() -> dict:
    """KubeRay's RayService schema, from where test_operator_model_service reads it."""
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def groups(rs: dict) -> tuple[dict, dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    return cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]


def k8s_valid(obj: dict) -> None:
    kubernetes_validate.validate(obj, "1.30", strict=True)


async def test_ray_pods_drain_on_termination_and_keep_state_on_redis(cluster, kubectl, rayservice_schema):
    ms = modelservice("durable", terminationGracePeriodSeconds=120, faultTolerance={
        "redisAddress": "fathom-redis.fathom.svc:6379", "redisPasswordSecret": {"name": "fathom-redis", "key": "password"}})
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, ms)
        rs = await eventually(lambda: objects(cluster, "rayservices").get("durable"))
    jsonschema.Draft7Validator(rayservice_schema).validate(rs)
    head, worker = groups(rs)
    for pod, role in ((head, "head"), (worker, "worker")):
        assert pod["terminationGracePeriodSeconds"] == 120
        hook = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert hook == ["python", "-m", "fathom.serve.prestop", role, "--timeout", "110"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["FATHOM_USAGE_STORE_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "fathom-redis", "key": "password"}}
    ft = rs["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft == {"redisAddress": "fathom-redis.fathom.svc:6379",
                  "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "fathom-redis", "key": "password"}}}}
    assert "externalStorageNamespace" not in ft  # KubeRay's per-RayCluster default: upgrades must not share it
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["usageStore"] == "redis://fathom-redis.fathom.svc:6379/0"
    assert args["usageKey"] == f"fathom/{NS}/durable" and args["gracefulShutdownTimeoutS"] == 110
    assert "password" not in rs["spec"]["serveConfigV2"].lower()


async def test_shared_model_cache_is_a_claim_filled_once_by_a_job(cluster, kubectl, rayservice_schema):
    ms = modelservice("cached", model={"uri": "hf://deepseek-ai/DeepSeek-V3", "path": "",
                                       "cache": {"type": "Shared", "storageClassName": "filestore", "size": "800Gi"}})
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, ms)
        rs = await eventually(lambda: objects(cluster, "rayservices").get("cached"))
        job = await eventually(lambda: next(iter(objects(cluster, "jobs").values()), None))
        claim = await eventually(lambda: objects(cluster, "persistentvolumeclaims").get("cached-model-cache"))
    jsonschema.Draft7Validator(rayservice_schema).validate(rs)
    for child in (job, claim):
        k8s_valid(child)
        assert child["metadata"]["ownerReferences"][0]["name"] == "cached"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "filestore",
                             "resources": {"requests": {"storage": "800Gi"}}}
    assert "snapshot_download" in job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    head, worker = groups(rs)
    [wait] = worker["initContainers"]
    assert wait["name"] == "wait-model-cache" and ".fathom-complete" in wait["command"][2]
    cache = next(v for v in worker["volumes"] if v["name"] == "model-cache")
    assert cache["persistentVolumeClaim"] == {"claimName": "cached-model-cache", "readOnly": True}
    assert not any(v["name"] == "model-cache" for v in head["volumes"])  # the head fetches the tokenizer only
    assert "allow_patterns" in head["initContainers"][0]["command"][2]
    engine = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["engine"]
    key = job["metadata"]["name"].removeprefix("cached-model-cache-")
    assert engine["model"] == f"/models/{key}"


async def test_node_model_cache_is_a_node_directory(cluster, kubectl, rayservice_schema):
    ms = modelservice("node", model={"uri": "s3://models/deepseek-v3", "cache": {"type": "Node"}})
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, ms)
        rs = await eventually(lambda: objects(cluster, "rayservices").get("node"))
    jsonschema.Draft7Validator(rayservice_schema).validate(rs)
    _, worker = groups(rs)
    cache = next(v for v in worker["volumes"] if v["name"] == "model-cache")
    assert cache["hostPath"] == {"path": "/var/cache/fathom/models", "type": "DirectoryOrCreate"}
    [fetch] = worker["initContainers"]
    assert "flock" in fetch["command"][2] and "aws s3 sync" in fetch["command"][2]
    mounts = {m["name"]: m for m in worker["containers"][0]["volumeMounts"]}
    assert mounts["model-cache"] == {"name": "model-cache", "mountPath": "/model-cache", "readOnly": True}
    assert not objects(cluster, "jobs") and not objects(cluster, "persistentvolumeclaims")


INCREMENTAL = {"strategy": "Incremental", "gatewayClassName": "istio", "maxSurgePercent": 25, "stepSizePercent": 10}


def events(cluster, reason: str) -> list[dict]:
    return [e for e in objects(cluster, "events").values() if e.get("reason") == reason]


async def test_incremental_upgrade_where_the_installed_kuberay_has_it(cluster, kubectl, rayservice_schema):
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    await kubectl.create(kube.CRDS, None, crd)
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, modelservice("inc", upgrade=INCREMENTAL))
        rs = await eventually(lambda: objects(cluster, "rayservices").get("inc"))
        assert rs["spec"]["upgradeStrategy"] == {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {
            "gatewayClassName": "istio", "maxSurgePercent": 25, "stepSizePercent": 10, "intervalSeconds": 60}}
        jsonschema.Draft7Validator(rayservice_schema).validate(rs)
        await eventually(lambda: objects(cluster, "modelservices")["inc"].get("status", {}).get("upgradeStrategy")
                         == "NewClusterWithIncrementalUpgrade")
        # a Serve-config change rolls out in place; a pod change needs a new cluster
        await kubectl.patch(kube.MODEL_SERVICES, NS, "inc", {"spec": {"engine": {"maxNumSeqs": 64}}})
        await eventually(lambda: any("in place" in e["message"] for e in events(cluster, "Rollout")))
        await kubectl.patch(kube.MODEL_SERVICES, NS, "inc", {"spec": {"image": "fathom:next"}})
        rollout = await eventually(lambda: [e for e in events(cluster, "Rollout") if "new cluster" in e["message"]])
        assert "NewClusterWithIncrementalUpgrade" in rollout[0]["message"]
        # KubeRay reports the rollout: the ModelService says how far it is
        await kubectl.patch(kube.RAY_SERVICES, NS, "inc", {"status": {
            "activeServiceStatus": {"applicationStatuses": {"fathom": {"status": "RUNNING"}},
                                    "rayClusterStatus": {"readyWorkerReplicas": 4}},
            "pendingServiceStatus": {"rayClusterName": "inc-new", "targetCapacity": 50, "trafficRoutedPercent": 40}}},
            sub="status")
        ms = await eventually(lambda: next((c for c in objects(cluster, "modelservices")["inc"]["status"]["conditions"]
                                            if c["reason"] == "IncrementalUpgrade"), None))
        assert ms["status"] == "True" and "capacity 50%, traffic 40%" in ms["message"]


async def test_without_incremental_support_the_operator_keeps_new_cluster_and_warns(cluster, kubectl):
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    del v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeStrategy"]["properties"][
        "clusterUpgradeOptions"]  # as KubeRay < 1.5 publishes it
    await kubectl.create(kube.CRDS, None, crd)
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, modelservice("old", upgrade=INCREMENTAL))
        rs = await eventually(lambda: objects(cluster, "rayservices").get("old"))
        warning = await eventually(lambda: events(cluster, "Unsupported"))
    assert rs["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    assert warning[0]["type"] == "Warning" and "KubeRay >= 1.5.1" in warning[0]["message"]


INFERENCE_POOL_CRD = Path(__file__).resolve().parents[1] / "fixtures/crds/inference.networking.k8s.io_inferencepools.yaml"


async def test_inference_pool_where_the_cluster_has_the_crd(tmp_path, monkeypatch):
    crd = yaml.safe_load(INFERENCE_POOL_CRD.read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    ms = modelservice("pooled", inferencePool={"enabled": True, "endpointPicker": "fathom-epp"})
    async with emulated_cluster(inference_extension=True) as api, _operator(api, tmp_path, monkeypatch) as kubectl:
        await kubectl.create(kube.MODEL_SERVICES, NS, ms)
        pool = await eventually(lambda: objects(api, "inferencepools").get("pooled"))
    jsonschema.Draft7Validator(schema).validate(pool)
    assert pool["spec"] == {"selector": {"matchLabels": {"fathom.dev/model-service": "pooled", "ray.io/serve": "true"}},
                            "targetPorts": [{"number": 8000}],
                            "endpointPickerRef": {"name": "fathom-epp", "port": {"number": 9002}, "failureMode": "FailClose"}}
    assert pool["metadata"]["ownerReferences"][0]["name"] == "pooled"


async def test_without_the_crd_no_inference_pool_and_a_warning(cluster, kubectl):
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, modelservice("pooled", inferencePool={"enabled": True}))
        warning = await eventually(lambda: events(cluster, "Unsupported"))
        assert objects(cluster, "rayservices").get("pooled") and not objects(cluster, "inferencepools")
    assert "InferencePool CRD" in warning[0]["message"]


@contextlib.asynccontextmanager
async def _operator(api, tmp_path, monkeypatch):
    """The real operator on `api`, and a client for the test."""
    write_kubeconfig(tmp_path / "kubeconfig", str(api.url).rstrip("/"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    kubectl = kube.KubeClient(kopf.ConnectionInfo(server=str(api.url).rstrip("/")))
    try:
        async with operator_running():
            yield kubectl
    finally:
        await kubectl.close()
