"""The checked-in CRDs are generated from fathom.api, structural, and default like the models."""

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fathom.api.crd import all_crds, structural_schema
from fathom.api.model_service import ModelServiceSpec
from fathom.api.tenant import TenantSpec
from fathom_operator import crdgen


def _schema(plural: str) -> dict:
    return all_crds()[f"fathom.dev_{plural}.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_checked_in_crds_match_the_models():
    assert crdgen.drifted(crdgen.DEFAULT_DIR) == [], "run: python -m fathom_operator.crdgen"


def test_check_flags_a_drifted_file(tmp_path):
    assert crdgen.main(["--dir", str(tmp_path)]) == 0
    (tmp_path / "fathom.dev_tenants.yaml").write_text("# edited by hand\n")
    assert crdgen.drifted(tmp_path) == ["fathom.dev_tenants.yaml"]
    assert crdgen.main(["--dir", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_crd_is_a_valid_kubernetes_object(name):
    text = (crdgen.DEFAULT_DIR / name).read_text()
    kubernetes_validate.validate(yaml.safe_load(text), "1.30", strict=True)


def _walk(node: dict, path: str):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("plural", ["modelservices", "tenants"])
def test_schema_is_structural(plural):
    for path, node in _walk(_schema(plural), ""):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "const"):
            assert banned not in node, f"{path} has {banned}"
        assert node.get("additionalProperties") is not False, f"{path} forbids extra keys (pruning does that)"
        assert not node.get("x-kubernetes-preserve-unknown-fields"), f"{path} preserves unknown fields"


def test_scale_subresource_and_columns():
    version = all_crds()["fathom.dev_modelservices.yaml"]["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    assert {"Phase", "Ready", "Replicas", "Desired", "Age"} <= {c["name"] for c in version["additionalPrinterColumns"]}


def _apply_defaults(schema: dict, obj):
    """What the API server does on write: fill absent properties from `default`, recursively."""
    if schema.get("type") == "object" and isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = _apply_defaults(sub, obj[key])
    elif schema.get("type") == "array" and isinstance(obj, list):
        return [_apply_defaults(schema["items"], x) for x in obj]
    return obj


@pytest.mark.parametrize("model, minimal", [
    (ModelServiceSpec, {"model": {"pvc": {"claimName": "models"}, "path": "deepseek-v3"}}),
    (TenantSpec, {"apiKeys": [{"secretKeyRef": {"name": "team-a", "key": "api-key"}}]}),
])
def test_server_side_defaults_equal_pydantic_defaults(model, minimal):
    defaulted = _apply_defaults(structural_schema(model), copy.deepcopy(minimal))
    assert defaulted == model.model_validate(minimal).to_wire()


def test_schema_rejects_what_the_model_rejects():
    validator = jsonschema.Draft4Validator(_schema("tenants"))
    good = {"spec": {"apiKeys": [{"sha256": "a" * 64}], "role": "admin", "weight": 2}}
    assert not list(validator.iter_errors(good))
    for bad in ({"role": "root"}, {"weight": 0}, {"apiKeys": []}, {"apiKeys": [{"sha256": "xyz"}]}):
        spec = {**good["spec"], **bad}
        assert list(validator.iter_errors({"spec": spec})), bad


def test_stdout_is_one_applyable_stream(capsys):
    assert crdgen.main(["--stdout"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["metadata"]["name"] for d in docs] == ["modelservices.fathom.dev", "tenants.fathom.dev"]
