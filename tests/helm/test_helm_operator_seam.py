"""The chart and the operator agree: ModelServices rendered by the chart go through the
operator's own pure reconcile into a RayService and an API Service, which must be valid
(KubeRay's published CRD, Kubernetes schemas), keep Ray's endpoints inside the cluster, and be
matched by the chart's NetworkPolicy, ServiceMonitor and OTLP wiring. The operator container's
arguments are parsed by the operator's real command-line parser."""

import kubernetes_validate
import pytest

from fathom_operator.__main__ import parse_args
from fathom_operator.reconcile import Observed, reconcile
from support.helm_schemas import crd_schema, validate
from support.helm_support import kuberay_reference
from support.helm_value_sets import EVERYTHING_ON, NAMESPACED, TWO_MODELS_WITH_TENANTS

RAY_INTERNAL_PORTS = {6379, 8265, 10001, 52365}
VALUE_SETS = {"everything-on": EVERYTHING_ON, "two-models-with-tenants": TWO_MODELS_WITH_TENANTS,
              "namespaced": NAMESPACED}


def children_of(ms: dict) -> tuple[dict, dict]:
    """(RayService, API Service) the operator renders for a chart-rendered ModelService."""
    obj = {**ms, "metadata": {**ms["metadata"], "uid": "0f0e0d0c-0000-4000-8000-000000000001", "generation": 1}}
    result = reconcile(obj, Observed(now="2026-01-01T00:00:00Z"))
    assert result.children is not None, f"operator refused {ms['metadata']['name']}: {result.status}"
    by_kind = {c["kind"]: c for c in result.children}
    return by_kind["RayService"], by_kind["Service"]


def pod_templates(ray_service: dict) -> list[dict]:
    cluster = ray_service["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels + Exists/In expressions) against a label set."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "Exists" and expr["key"] not in labels:
            return False
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.fixture(scope="module")
def kuberay_schema() -> dict:
    return dict([crd_schema(kuberay_reference() / "ray.io_rayservices.yaml")])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_operator_children_of_chart_model_services_are_valid_and_private(helm, kuberay_schema, name):
    objs = helm.template(VALUE_SETS[name])
    model_services = [o for o in objs if o["kind"] == "ModelService"]
    assert len(model_services) == len(VALUE_SETS[name]["modelServices"])
    for ms in model_services:
        ray_service, service = children_of(ms)
        validate(ray_service, kuberay_schema)
        kubernetes_validate.validate(service, "1.37.0", strict=True)
        head = ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
        targets = {p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
        assert targets == {8000}, f"the API Service must reach only the Serve port, got {targets}"
        assert not targets & RAY_INTERNAL_PORTS


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_policies_and_monitors_select_what_the_operator_creates(helm, name):
    objs = helm.template(VALUE_SETS[name])
    ray_policies = {o["metadata"]["namespace"]: o for o in objs
                    if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "fathom-ray"}
    monitor = next((o for o in objs if o["kind"] == "ServiceMonitor"), None)
    for ms in (o for o in objs if o["kind"] == "ModelService"):
        ray_service, service = children_of(ms)
        policy = ray_policies[ms["metadata"]["namespace"]]
        for template in pod_templates(ray_service):
            labels = template["metadata"]["labels"]
            assert selects(policy["spec"]["podSelector"], labels), "the Ray NetworkPolicy misses a Ray pod"
            env = {e["name"]: e.get("value") for c in template["spec"]["containers"] for e in c.get("env", [])}
            assert env["OTEL_RESOURCE_ATTRIBUTES"].endswith(f"fathom.model_service={ms['metadata']['name']}")
            if name != "namespaced":  # the bundled collector (everything-on) or no export
                assert env.get("OTEL_TRACES_EXPORTER") in ("otlp", "none")
        # the autoscaler (in the operator pod) reaches /metrics on the Serve port of the Ray pods
        operator = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "fathom-operator")
        op_labels = operator["spec"]["template"]["metadata"]["labels"]
        assert any(8000 in {p["port"] for p in r.get("ports", [])} and any(
            selects(peer.get("podSelector", {}), op_labels) for peer in r.get("from", [{}]))
            for r in policy["spec"]["ingress"]), "the operator cannot reach the Serve port of Ray pods"
        op_policy = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "fathom-operator")
        assert any(8000 in {p["port"] for p in r["ports"]} and all(
            selects(peer["podSelector"], pod_templates(ray_service)[0]["metadata"]["labels"]) for peer in r["to"])
            for r in op_policy["spec"]["egress"] if "to" in r), "the operator's egress misses the Ray pods"
        intra = [r for r in policy["spec"]["ingress"] if "ports" not in r]
        # KubeRay labels every pod it creates ray.io/cluster=<RayCluster name> on top of the template's
        created = {**pod_templates(ray_service)[1]["metadata"]["labels"], "ray.io/cluster": f"{name}-abcde"}
        assert all(selects(r["from"][0]["podSelector"], created) for r in intra), "Ray pods of one cluster must reach each other"
        assert not any(selects(r["from"][0]["podSelector"], pod_templates(ray_service)[1]["metadata"]["labels"])
                       for r in intra), "a pod outside a KubeRay cluster must not count as a Ray peer"
        if monitor:
            assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
            assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("values", [None, EVERYTHING_ON, NAMESPACED], ids=["default", "everything-on", "namespaced"])
def test_operator_parses_the_arguments_the_chart_gives_it(helm, values):
    objs = helm.template(values)
    (deploy,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "fathom-operator"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "fathom_operator"]
    args = parse_args(container["args"])
    assert args.liveness == "http://0.0.0.0:8080/healthz" and args.peering is None
    assert args.namespace == ((values or {}).get("operator", {}).get("watchNamespaces") or [])


def test_ray_containers_the_operator_renders_are_locked_down(helm):
    (ms, *_) = [o for o in helm.template(TWO_MODELS_WITH_TENANTS) if o["kind"] == "ModelService"]
    ray_service, _ = children_of(ms)
    for template in pod_templates(ray_service):
        pod_ctx = template["spec"].get("securityContext", {})
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            ctx = {**pod_ctx, **c.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, c["name"]
            assert ctx.get("allowPrivilegeEscalation") is False, c["name"]
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], c["name"]
            assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", c["name"]
            assert ctx.get("readOnlyRootFilesystem") is True, c["name"]
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{c['name']}: Ray's session dir /tmp/ray needs a writable /tmp"
        assert pod_ctx.get("runAsUser") == 1000, "the rayproject/ray image's user is uid 1000"
    autoscaler = ray_service["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert autoscaler["securityContext"]["readOnlyRootFilesystem"] is True
    assert autoscaler["securityContext"]["capabilities"]["drop"] == ["ALL"]
