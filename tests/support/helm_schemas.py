"""Validation of rendered custom resources against CRD schemas (strictly) and pydantic specs."""

import copy
from pathlib import Path

import jsonschema
import pydantic
import yaml

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
        if n.get("x-kubernetes-int-or-string"):  # what the API server enforces for it
            n["type"] = ["integer", "string"]
        if "properties" in n and "additionalProperties" not in n:
            n["additionalProperties"] = False
        stack.extend(n.get("properties", {}).values())
        if isinstance(n.get("additionalProperties"), dict):
            stack.append(n["additionalProperties"])
        if isinstance(n.get("items"), dict):
            stack.append(n["items"])
    node["properties"]["metadata"] = {"type": "object"}
    return node


def validate(obj: dict, schemas: dict) -> None:
    """Raise AssertionError naming the object, the problem and its path; custom resources of
    Fathom must also parse with the operator's pydantic spec."""
    where = f"{obj['kind']} {obj['metadata']['name']}"
    try:
        jsonschema.Draft7Validator(schemas[obj["kind"]]).validate(obj)
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"{where}: {exc.message} at {'.'.join(map(str, exc.absolute_path))}") from None
    if obj["kind"] in PYDANTIC_SPECS:
        try:
            PYDANTIC_SPECS[obj["kind"]].model_validate(obj["spec"])
        except pydantic.ValidationError as exc:
            raise AssertionError(f"{where}: the operator refuses its spec: {exc}") from None
