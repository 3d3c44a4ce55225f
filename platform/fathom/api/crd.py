"""CustomResourceDefinitions generated from the pydantic specs (no torch, no ray, no kubernetes).

`structural_schema(Model)` turns a pydantic model's JSON Schema into a Kubernetes *structural*
OpenAPI v3 schema: `$ref`s inlined, `Optional[X]` reduced to X (absent = unset), int|str to
`x-kubernetes-int-or-string`, `const`/`Literal` to `enum`, draft-2020 exclusive bounds to the
OpenAPI 3.0 boolean form, titles dropped, descriptions and defaults kept. Fields filled by a
`default_factory` get `default: {}` / `[]` so the API server materialises their nested defaults.
"""

from typing import Any

from pydantic import BaseModel

from fathom.api.model_service import GROUP, VERSION, ModelServiceSpec, ModelServiceStatus
from fathom.api.tenant import TenantSpec, TenantStatus

_KEPT = ("pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "enum", "format")


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of `model` as it appears on the wire (camelCase)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = _convert(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {**target, **_annotations(node)}
    if "anyOf" in node:
        return {**_any_of(node["anyOf"], defs), **_annotations(node)}
    kind = node.get("type")
    if kind is None:
        raise ValueError(f"schema node without a type cannot be structural: {node}")
    out: dict[str, Any] = {"type": kind, **_annotations(node)}
    out.update({k: node[k] for k in _KEPT if k in node})
    if "const" in node:
        out["enum"] = [node["const"]]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[plain], out[bound] = node[bound], True
    if kind == "object":
        out.update(_object(node, defs))
    elif kind == "array":
        out["items"] = _convert(node["items"], defs)
    return out


def _object(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    props = node.get("properties")
    if props:
        required = set(node.get("required", ()))
        out["properties"] = {}
        for name, sub in props.items():
            converted = _convert(sub, defs)
            factory = name not in required and "default" not in sub and not _is_optional(sub)
            if factory and converted.get("type") in ("object", "array"):
                converted["default"] = {} if converted["type"] == "object" else []
            out["properties"][name] = converted
        if required:
            out["required"] = sorted(required)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _convert(extra, defs)
    return out


def _any_of(variants: list[dict[str, Any]], defs: dict[str, Any]) -> dict[str, Any]:
    real = [v for v in variants if v.get("type") != "null"]
    if {v.get("type") for v in real} == {"integer", "string"}:
        return {"x-kubernetes-int-or-string": True}
    if len(real) != 1:
        raise ValueError(f"unions other than Optional[X] and int|str are not structural: {variants}")
    return _convert(real[0], defs)


def _is_optional(node: dict[str, Any]) -> bool:
    return any(v.get("type") == "null" for v in node.get("anyOf", ()))


def _annotations(node: dict[str, Any]) -> dict[str, Any]:
    out = {}
    if "description" in node:
        out["description"] = node["description"]
    if node.get("default") is not None:
        out["default"] = node["default"]
    return out


def _crd(kind: str, plural: str, spec: type[BaseModel], status: type[BaseModel], *, short_names: list[str],
         columns: list[dict[str, str]], subresources: dict[str, Any], description: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(spec),
            "status": structural_schema(status),
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "fathom"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short_names, "categories": ["fathom"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": subresources,
                "additionalPrinterColumns": columns,
            }],
        },
    }


def model_service_crd() -> dict[str, Any]:
    """The ModelService CRD, with status and /scale subresources and kubectl columns."""
    return _crd(
        "ModelService", "modelservices", ModelServiceSpec, ModelServiceStatus,
        short_names=["msvc"],
        description="A DeepSeek-style MoE model served by Fathom on a KubeRay RayService, with load-driven autoscaling.",
        subresources={"status": {}, "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }},
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
            {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
            {"name": "TP", "type": "integer", "jsonPath": ".spec.engine.tensorParallelSize"},
            {"name": "EP", "type": "integer", "jsonPath": ".spec.engine.expertParallelSize"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def tenant_crd() -> dict[str, Any]:
    """The Tenant CRD, with the status subresource and kubectl columns."""
    return _crd(
        "Tenant", "tenants", TenantSpec, TenantStatus,
        short_names=["ftenant"],
        description="A tenant of the Fathom API: hashed keys, role, allowed models, priority, weight and limits.",
        subresources={"status": {}},
        columns=[
            {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
            {"name": "Priority", "type": "integer", "jsonPath": ".spec.priorityClass"},
            {"name": "Weight", "type": "number", "jsonPath": ".spec.weight"},
            {"name": "Keys", "type": "integer", "jsonPath": ".status.keyCount"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name (kubebuilder convention `<group>_<plural>.yaml`) → CRD manifest."""
    return {f"{GROUP}_{crd['spec']['names']['plural']}.yaml": crd for crd in (model_service_crd(), tenant_crd())}
