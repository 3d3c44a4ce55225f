"""The real operator (kopf) against an emulated API server over HTTP: ModelService lifecycle."""

import asyncio
import base64
import hashlib
import pathlib

import jsonschema
import kopf
import pytest
import yaml

from fathom_operator import kube
from support.operator_support import emulated_cluster, eventually, operator_running, write_kubeconfig

# KubeRay's published RayService CRD, kept in the repository (tests/fixtures/kuberay/README.md)
KUBERAY_CRD = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "kuberay" / "ray.io_rayservices.yaml"
NS = "serving"


def modelservice(name="deepseek", **spec) -> dict:
    body = {"model": {"pvc": {"claimName": "models"}, "path": "deepseek-v3"},
            "engine": {"tensorParallelSize": 16, "expertParallelSize": 8, "maxNumSeqs": 128},
            "resources": {"gpus": 1, "gpusPerNode": 8, "cpu": "10", "memory": "100Gi"},
            "autoscaling": {"enabled": False}, "replicas": 2}
    body.update(spec)
    return {"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": name, "namespace": NS}, "spec": body}


@pytest.fixture(scope="session")
def rayservice_schema() -> dict:
    crd = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def objects(api, plural: str) -> dict:
    return {name: obj.raw for (res, _, name), obj in api.objects.items() if res.plural == plural and not obj.deleted}


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


async def test_create_update_scale_delete(cluster, kubectl, rayservice_schema):
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, modelservice())
        rs = await eventually(lambda: objects(cluster, "rayservices").get("deepseek"))
        svc = await eventually(lambda: objects(cluster, "services").get("deepseek-api"))

        # valid against KubeRay's own published schema
        jsonschema.Draft7Validator(rayservice_schema).validate(rs)
        cluster_spec = rs["spec"]["rayClusterConfig"]
        workers = cluster_spec["workerGroupSpecs"][0]
        assert workers["replicas"] == 4 and workers["minReplicas"] == 4  # 2 instances x 2 pods of 8 ranks
        container = workers["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["resources"]["requests"]["memory"] == "800Gi"
        head = cluster_spec["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["num-gpus"] == "0"
        serve = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
        assert serve["import_path"] == "fathom.serve.app:app_from_config"
        assert serve["args"]["engine"]["tensorParallelSize"] == 16
        assert serve["args"]["engine"]["model"] == "/models/deepseek-v3"
        assert serve["deployments"][0]["num_replicas"] == 2
        owner = objects(cluster, "modelservices")["deepseek"]
        for child in (rs, svc):
            assert child["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        assert svc["spec"]["ports"][0]["port"] == 8000

        status = (await eventually(lambda: objects(cluster, "modelservices")["deepseek"].get("status", {})
                                   .get("observedGeneration") == 1 and objects(cluster, "modelservices")["deepseek"]))["status"]
        assert status["phase"] == "Deploying" and status["replicas"] == 2
        assert status["selector"] == "fathom.dev/model-service=deepseek,ray.io/node-type=worker"
        assert status["endpoint"] == "http://deepseek-api.serving.svc:8000"
        assert condition(objects(cluster, "modelservices")["deepseek"], "Progressing")["status"] == "True"

        # KubeRay reports the app running: the operator's resync turns it Ready
        uid = rs["metadata"]["uid"]
        await kubectl.patch(kube.RAY_SERVICES, NS, "deepseek", {"status": {"activeServiceStatus": {
            "applicationStatuses": {"fathom": {"status": "RUNNING"}},
            "rayClusterStatus": {"readyWorkerReplicas": 4}}}}, sub="status")
        ms = await eventually(lambda: objects(cluster, "modelservices")["deepseek"]["status"].get("phase") == "Ready"
                              and objects(cluster, "modelservices")["deepseek"])
        assert ms["status"]["readyReplicas"] == 2 and condition(ms, "Ready")["status"] == "True"

        # update in place: same RayService object, new engine settings
        await kubectl.patch(kube.MODEL_SERVICES, NS, "deepseek", {"spec": {"engine": {"maxNumSeqs": 256}}})
        rs = await eventually(lambda: "maxNumSeqs: 256" in objects(cluster, "rayservices")["deepseek"]["spec"]["serveConfigV2"]
                              and objects(cluster, "rayservices")["deepseek"])
        assert rs["metadata"]["uid"] == uid

        # the scale subresource: kubectl scale --replicas=3
        scale = await kubectl.get(kube.MODEL_SERVICES, NS, "deepseek", sub="scale")
        assert scale["kind"] == "Scale" and scale["status"]["replicas"] == 2
        await kubectl.patch(kube.MODEL_SERVICES, NS, "deepseek", {"spec": {"replicas": 3}}, sub="scale")
        rs = await eventually(lambda: objects(cluster, "rayservices")["deepseek"]["spec"]["rayClusterConfig"]
                              ["workerGroupSpecs"][0]["replicas"] == 6 and objects(cluster, "rayservices")["deepseek"])
        assert "num_replicas: 3" in rs["spec"]["serveConfigV2"]
        scale = await eventually(lambda: kubectl.get(kube.MODEL_SERVICES, NS, "deepseek", sub="scale"))
        await eventually(lambda: objects(cluster, "modelservices")["deepseek"]["status"]["replicas"] == 3)

        # delete: owner references let the garbage collector remove the children
        await kubectl.delete(kube.MODEL_SERVICES, NS, "deepseek")
        await eventually(lambda: not objects(cluster, "modelservices") and not objects(cluster, "rayservices")
                         and not objects(cluster, "services") and not objects(cluster, "secrets"))


async def test_each_model_service_gets_its_own_ray_token_and_the_scrape_keys_digest(cluster, kubectl):
    """Issue 12: the operator makes the scrape key's Secret (random, in its own namespace) and one
    auth Secret per ModelService, owned by it: a random Ray token under KubeRay's key `auth_token`
    (kept across passes and spec changes) and the scrape key's digest; someone else's Secret of
    that name is left alone and reported."""
    async with operator_running("--metrics-key-secret", "fathom-system/fathom-metrics-key"):
        await kubectl.create(kube.SECRETS, NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "theirs-fathom-auth", "namespace": NS}, "data": {"auth_token": _b64("their own")}})
        for name in ("a", "b", "theirs"):
            await kubectl.create(kube.MODEL_SERVICES, NS, modelservice(name))
        auth = {n: await eventually(lambda n=n: objects(cluster, "secrets").get(f"{n}-fathom-auth")) for n in "ab"}
        scrape = _text(await kubectl.get(kube.SECRETS, "fathom-system", "fathom-metrics-key"), "token")
        tokens = {n: _text(s, "auth_token") for n, s in auth.items()}
        assert len(scrape) >= 32 and all(len(t) >= 32 for t in tokens.values()) and tokens["a"] != tokens["b"]
        for n, secret in auth.items():
            assert _text(secret, "metrics-key.sha256") == hashlib.sha256(scrape.encode()).hexdigest()
            owner = objects(cluster, "modelservices")[n]
            assert secret["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
            assert "fathom.dev/last-applied" not in secret["metadata"].get("annotations", {})  # no copy of the data
            rs = await eventually(lambda n=n: objects(cluster, "rayservices").get(n))
            assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token", "secretName": f"{n}-fathom-auth"}
        await kubectl.patch(kube.MODEL_SERVICES, NS, "a", {"spec": {"image": "fathom:next"}})
        await eventually(lambda: "fathom:next" in str(objects(cluster, "rayservices")["a"]["spec"]))
        assert _text(objects(cluster, "secrets")["a-fathom-auth"], "auth_token") == tokens["a"]
        theirs = await eventually(lambda: condition(objects(cluster, "modelservices")["theirs"], "ChildrenOwned")
                                  .get("status") == "False" and objects(cluster, "modelservices")["theirs"])
        assert "theirs-fathom-auth" in condition(theirs, "ChildrenOwned")["message"]
        assert _text(objects(cluster, "secrets")["theirs-fathom-auth"], "auth_token") == "their own"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(secret: dict, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode().strip()


async def test_invalid_spec_is_a_condition_not_a_crash_loop(cluster, kubectl):
    bad = modelservice("bad", engine={"tensorParallelSize": 4, "expertParallelSize": 3},
                       autoscaling={"minReplicas": 5, "maxReplicas": 2})
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, bad)
        ms = await eventually(lambda: objects(cluster, "modelservices")["bad"].get("status", {}).get("phase") == "Invalid"
                              and objects(cluster, "modelservices")["bad"])
        ready = condition(ms, "Ready")
        assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
        assert "expert_parallel_size (3) must divide tensor_parallel_size (4)" in ready["message"]
        assert "minReplicas (5) exceeds maxReplicas (2)" in ready["message"]
        assert condition(ms, "Degraded")["status"] == "True"
        assert "bad" not in objects(cluster, "rayservices") and "bad-api" not in objects(cluster, "services")
        warning = await eventually(lambda: [e for e in objects(cluster, "events").values()
                                            if e.get("reason") == "InvalidSpec" and e.get("type") == "Warning"])
        assert "must divide" in warning[0]["message"]
        # fixing the spec recovers without a restart
        await kubectl.patch(kube.MODEL_SERVICES, NS, "bad", {"spec": {
            "engine": {"expertParallelSize": 2}, "autoscaling": {"minReplicas": 1}}})
        await eventually(lambda: "bad" in objects(cluster, "rayservices"))
        ms = await eventually(lambda: objects(cluster, "modelservices")["bad"]["status"]["phase"] == "Deploying"
                              and objects(cluster, "modelservices")["bad"])
        assert ms["status"]["observedGeneration"] == 2


async def test_cluster_without_kuberay_is_a_condition(tmp_path, monkeypatch):
    async with emulated_cluster(kuberay=False) as api:
        write_kubeconfig(tmp_path / "kubeconfig", str(api.url).rstrip("/"))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        kubectl = kube.KubeClient(kopf.ConnectionInfo(server=str(api.url).rstrip("/")))
        try:
            async with operator_running():
                await kubectl.create(kube.MODEL_SERVICES, NS, modelservice())
                ms = await eventually(lambda: objects(api, "modelservices")["deepseek"].get("status", {})
                                      .get("phase") == "Pending" and objects(api, "modelservices")["deepseek"])
            assert condition(ms, "Ready")["reason"] == "KubeRayNotInstalled"
            assert "install the KubeRay operator" in condition(ms, "Degraded")["message"]
            assert not objects(api, "services")
        finally:
            await kubectl.close()


async def test_other_writers_fields_survive_and_idle_resync_writes_nothing(cluster, kubectl):
    async with operator_running():
        await kubectl.create(kube.MODEL_SERVICES, NS, modelservice())
        rs = await eventually(lambda: objects(cluster, "rayservices").get("deepseek"))
        # another controller (or a human) adds a label, an annotation and an env var to the workers
        workers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        workers[0]["template"]["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
        await kubectl.patch(kube.RAY_SERVICES, NS, "deepseek", {
            "metadata": {"labels": {"team": "search"}, "annotations": {"note": "keep"}},
            "spec": {"rayClusterConfig": {"workerGroupSpecs": workers}}})
        # a spec change makes the operator patch the RayService again...
        await kubectl.patch(kube.MODEL_SERVICES, NS, "deepseek", {"spec": {"image": "fathom:next"}})
        rs = await eventually(lambda: "fathom:next" in str(objects(cluster, "rayservices")["deepseek"]["spec"])
                              and objects(cluster, "rayservices")["deepseek"])
        # ...without removing what it does not own
        assert rs["metadata"]["labels"]["team"] == "search" and rs["metadata"]["annotations"]["note"] == "keep"
        env = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "EXTRA", "value": "1"} in env
        # idempotent: several resync periods later no child was written again
        await asyncio.sleep(0.3)
        version = objects(cluster, "rayservices")["deepseek"]["metadata"]["resourceVersion"]
        svc_version = objects(cluster, "services")["deepseek-api"]["metadata"]["resourceVersion"]
        await asyncio.sleep(1.5)
        assert objects(cluster, "rayservices")["deepseek"]["metadata"]["resourceVersion"] == version
        assert objects(cluster, "services")["deepseek-api"]["metadata"]["resourceVersion"] == svc_version
