"""The chart ships the generated CRDs, and every ModelService and Tenant it renders is valid
against them (strictly: an unknown field, which the API server would silently prune, is an
error here) and against the pydantic models the operator parses them with. Any RayService
in the output is checked against KubeRay's published CRD."""

import copy

import pytest
from conftest import CHART, kuberay_reference
from helm_schemas import crd_schema, validate
from helm_value_sets import DEEPSEEK_V3, VALUE_SETS


@pytest.fixture(scope="module")
def schemas() -> dict:
    found = dict(crd_schema(p) for p in sorted((CHART / "crds").glob("*.yaml")))
    found.update([crd_schema(kuberay_reference() / "ray.io_rayservices.yaml")])
    return found


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
