"""examples/k8s: the manifests are valid, and the operator turns them into what KubeRay accepts."""

import pathlib
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_operator_model_service import KUBERAY_CRD

from fathom.api.crd import all_crds
from fathom.api.model_service import ModelServiceSpec
from fathom.api.tenant import TenantManifest, hash_api_key
from fathom_operator import kube
from fathom_operator.tenants import SECRET_NAME, read_secret_file
from support.operator_support import eventually, operator_running

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "k8s"
NS = "fathom-demo"
REFS = {"ModelService": kube.MODEL_SERVICES, "Tenant": kube.TENANTS, "Secret": kube.SECRETS}


def docs() -> list[dict]:
    return [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def crd_schema(plural: str) -> dict:
    return all_crds()[f"fathom.dev_{plural}.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_manifests_are_valid():
    kinds = [d["kind"] for d in docs()]
    assert kinds.count("ModelService") == 2 and kinds.count("Tenant") == 2
    for d in docs():
        if d["kind"] == "ModelService":
            ModelServiceSpec.model_validate(d["spec"])
            jsonschema.Draft4Validator(crd_schema("modelservices")).validate(d)
        elif d["kind"] == "Tenant":
            TenantManifest.model_validate(d)
            jsonschema.Draft4Validator(crd_schema("tenants")).validate(d)


def test_run_script_parses():
    subprocess.run(["bash", "-n", str(EXAMPLES / "run-kind.sh")], check=True)


def _live(api, plural: str) -> dict:
    return {n: o.raw for (r, _, n), o in api.objects.items() if r.plural == plural and not o.deleted}


@pytest.mark.slow  # ~7 s: every example through the running operator
async def test_examples_through_the_operator(cluster, kubectl):
    schema = yaml.load(KUBERAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    rayservice = next(v for v in schema["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    async with operator_running():
        for d in docs():
            await kubectl.create(REFS[d["kind"]], NS, {**d, "metadata": {**d["metadata"], "namespace": NS}})
        services = await eventually(lambda: len(_live(cluster, "rayservices")) == 2 and _live(cluster, "rayservices"))
        for rs in services.values():
            jsonschema.Draft7Validator(rayservice).validate(rs)
        assert services["deepseek-v3"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 1  # one node
        await eventually(lambda: {"demo-api", "deepseek-v3-api"} <= set(_live(cluster, "services")))
        secret = await eventually(lambda: _live(cluster, "secrets").get(SECRET_NAME))
        tenants = await eventually(lambda: len(read_secret_file(_live(cluster, "secrets")[SECRET_NAME])) == 2
                                   and {t.name: t for t in read_secret_file(_live(cluster, "secrets")[SECRET_NAME])})
        assert tenants["team-a"].spec.digests == [hash_api_key("sk-team-a-demo")]
        assert tenants["ops"].spec.digests == [hash_api_key("sk-ops-demo")]
        assert secret["type"] == "Opaque"
        # the core objects are valid against Kubernetes' own schemas
        for obj in [*(_live(cluster, "services").values()), _live(cluster, "secrets")[SECRET_NAME]]:
            kubernetes_validate.validate(obj, "1.30", strict=True)
