"""The chart ships the generated CRDs, and every ModelService and Tenant it renders is valid
against them (strictly: an unknown field, which the API server would silently prune, is an
error here) and against the pydantic models the operator parses them with. Any RayService
in the output is checked against KubeRay's published CRD."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import CHART, kuberay_reference
from helm_value_sets import DEEPSEEK_V3, VALUE_SETS

from fathom.api.model_service import ModelServiceSpec
from fathom.api.tenant import TenantSpec

PYDANTIC_SPECS = {"ModelService": ModelServiceSpec, "Tenant": TenantSpec}


def crd_schema(path: Path) -> tuple[str, dict]:
    """(kind, strict JSON schema of the served version) of a CRD manifest."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the KubeRay CRD is large
    crd = next(d for d in yaml.load_all(path.read_text(), Loader=loader) if d)
    version = next(v for v in crd["spec"]["versions"] if v.get("served", True))
    return crd["spec"]["names"]["kind"], strict(version["schema"]["openAPIV3Schema"])


def strict(node: dict) -> dict:
    """Forbid fields a structural schema would prune: what `kubectl apply --validate=strict` refuses."""
    node = copy.deepcopy(node)
    stack = [node]
    while stack:
        n = stack.pop()
        if "properties" in n and "additionalProperties" not in n and n is not node.get("properties", {}).get("metadata"):
            n["additionalProperties"] = False
        stack.extend(n.get("properties", {}).values())
        if isinstance(n.get("additionalProperties"), dict):
            stack.append(n["additionalProperties"])
        if isinstance(n.get("items"), dict):
            stack.append(n["items"])
    node["properties"]["metadata"] = {"type": "object"}
    return node


@pytest.fixture(scope="module")
def schemas() -> dict:
    found = dict(crd_schema(p) for p in sorted((CHART / "crds").glob("*.yaml")))
    found.update([crd_schema(kuberay_reference() / "ray.io_rayservices.yaml")])
    return found


def validate(obj: dict, schemas: dict) -> None:
    where = f"{obj['kind']} {obj['metadata']['name']}"
    try:
        jsonschema.Draft7Validator(schemas[obj["kind"]]).validate(obj)
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"{where}: {exc.message} at {'.'.join(map(str, exc.absolute_path))}") from None
    if obj["kind"] in PYDANTIC_SPECS:
        PYDANTIC_SPECS[obj["kind"]].model_validate(obj["spec"])


def test_chart_ships_the_fathom_crds(helm):
    crds = [o for o in helm.template() if o["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == ["modelservices.fathom.dev", "tenants.fathom.dev"]
    ms = next(c for c in crds if c["metadata"]["name"] == "modelservices.fathom.dev")
    assert ms["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_custom_resources_match_their_crds(helm, schemas, name):
    objs = helm.template(VALUE_SETS[name])
    checked = [o for o in objs if o["kind"] in ("ModelService", "Tenant", "RayService")]
    for obj in checked:
        validate(obj, schemas)
    if name in ("two-models-with-tenants", "everything-on", "namespaced"):
        assert sorted(o["kind"] for o in checked) == ["ModelService"] * 2 + ["Tenant"] * 2


@pytest.mark.parametrize("spec_patch,problem", [
    ({"engine": {"tensorParallelSize": 0}}, "tensorParallelSize"),
    ({"engine": {"tensorParalelSize": 8}}, "tensorParalelSize"),
    ({"autoscaling": {"minReplicas": -1}}, "minReplicas"),
])
def test_a_spec_the_crd_refuses_is_caught(helm, schemas, spec_patch, problem):
    """The CRD check is not vacuous: values that pass the chart's schema but not the CRD fail here."""
    bad = copy.deepcopy(DEEPSEEK_V3)
    for key, value in spec_patch.items():
        bad["spec"][key] = {**bad["spec"].get(key, {}), **value}
    (ms,) = [o for o in helm.template({"modelServices": [bad]}) if o["kind"] == "ModelService"]
    with pytest.raises(AssertionError, match=problem):
        validate(ms, schemas)
