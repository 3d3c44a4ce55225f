"""The chart ships the generated CRDs, and every ModelService and Tenant it renders is valid
against them (strictly: an unknown field, which the API server would silently prune, is an
error here) and against the pydantic models the operator parses them with. Any RayService
in the output is checked against KubeRay's published CRD."""

import copy
import re
import subprocess
import sys

import pytest
import yaml

from support.helm_schemas import crd_schema, validate
from support.helm_support import CHART, ROOT, kuberay_reference
from support.helm_value_sets import DEEPSEEK_V3, VALUE_SETS


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
        expected = ["ModelService"] * len(VALUE_SETS[name]["modelServices"]) + ["Tenant"] * 2
        assert sorted(o["kind"] for o in checked) == expected


BAD_SPECS = [
    ({"engine": {"tensorParallelSize": 0}}, "tensorParallelSize"),
    ({"engine": {"tensorParalelSize": 8}}, "tensorParalelSize"),
    ({"autoscaling": {"minReplicas": -1}}, "minReplicas"),
    ({"engine": {"dtype": "fp4"}}, "dtype"),
    ({"resources": {"memory": ["64Gi"]}}, "memory"),
]


def patched(spec_patch: dict) -> dict:
    bad = copy.deepcopy(DEEPSEEK_V3)
    for key, value in spec_patch.items():
        bad["spec"][key] = {**bad["spec"].get(key, {}), **value}
    return bad


@pytest.mark.parametrize("spec_patch,problem", BAD_SPECS, ids=[p for _, p in BAD_SPECS])
def test_a_bad_model_service_spec_fails_at_install_naming_the_field(helm, spec_patch, problem):
    """values.schema.json carries the CRD's spec schema (.ci/helm-values-schema keeps it in sync)."""
    err = helm.template_error({"modelServices": [patched(spec_patch)]})
    assert "modelServices.0.spec." in err.replace("/", ".") and problem in err, err


@pytest.mark.parametrize("spec_patch,problem", BAD_SPECS, ids=[p for _, p in BAD_SPECS])
def test_the_crd_check_is_not_vacuous(helm, schemas, spec_patch, problem):
    (ms,) = [o for o in helm.template({"modelServices": [DEEPSEEK_V3]}) if o["kind"] == "ModelService"]
    ms["spec"] = patched(spec_patch)["spec"] | {"image": ms["spec"]["image"], "env": ms["spec"]["env"]}
    with pytest.raises(AssertionError, match=problem):
        validate(ms, schemas)


def test_values_schema_is_in_sync_with_the_crds():
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "helm-values-schema"), "--check"], check=False,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_readme_and_values_examples_render_valid_resources(helm, schemas):
    """The examples users copy (README's my-values.yaml, values.yaml's commented items) stay valid."""
    readme = (CHART / "README.md").read_text()
    example = yaml.safe_load(re.search(r"cat > my-values.yaml <<'EOF'\n(.*?)\nEOF", readme, re.DOTALL).group(1))
    commented = re.findall(r"^(# - name:.*\n(?:#   .*\n)+)", (CHART / "values.yaml").read_text(), re.MULTILINE)
    items = [yaml.safe_load("\n".join(ln[2:] for ln in block.splitlines())) for block in commented]
    from_values = {"modelServices": [i for b in items for i in b if "model" in i["spec"]],
                   "tenants": [i for b in items for i in b if "apiKeys" in i["spec"]]}
    for values in (example, from_values):
        objs = [o for o in helm.template(values) if o["kind"] in ("ModelService", "Tenant")]
        assert sorted(o["kind"] for o in objs) == ["ModelService", "Tenant"]
        for obj in objs:
            validate(obj, schemas)
