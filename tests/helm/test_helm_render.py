"""`helm lint` and `helm template` with a real helm, for the defaults and several value sets;
every rendered object validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors) for the oldest and newest Kubernetes the chart supports."""

import re

import kubernetes_validate
import promql_parser
import pytest

from support.helm_support import ROOT
from support.helm_value_sets import EVERYTHING_ON, NAMESPACED, TWO_MODELS_WITH_TENANTS, VALUE_SETS

# Kinds that are not part of Kubernetes itself; checked against their CRDs in test_helm_crds.py
# (fathom.dev) or by shape below (Prometheus Operator kinds, whose CRDs are not shipped here).
CUSTOM_KINDS = {"ModelService", "Tenant", "RayService", "ServiceMonitor", "PrometheusRule"}
KUBE_VERSIONS = ["1.27.0", "1.37.0"]


def kinds(objs: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean(helm, name):
    out = helm.lint(VALUE_SETS[name])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[ERROR]" not in out.stdout and "[WARNING]" not in out.stdout, out.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_validate_against_kubernetes_schemas(helm, name, kube_version):
    objs = helm.template(VALUE_SETS[name], kube_version=kube_version)
    assert objs or name == "everything-off"
    for obj in objs:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']} ({name})"
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {kube_version}: {exc.message} at {list(exc.path)}")
        if obj["kind"] != "CustomResourceDefinition":  # crds/ are installed as they are, not templated
            assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "fathom", where


def test_default_install_is_the_operator_and_its_rbac(helm):
    objs = helm.template()
    assert kinds(objs) == sorted([
        "ServiceAccount", "Deployment", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
        "ClusterRoleBinding", "NetworkPolicy", "NetworkPolicy", "Role", "RoleBinding",  # + the scrape key's
    ] + ["CustomResourceDefinition"] * len(by_kind(objs, "CustomResourceDefinition")))
    (deploy,) = by_kind(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "fathom_operator"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz", "--resync-seconds=30",
                                 "--tenant-resync-seconds=60", "--metrics-key-secret=fathom/fathom-metrics-key"]
    assert not [a for a in container["args"] if a.startswith("--namespace")], "default watches all namespaces"
    assert container["image"] == "ghcr.io/fathom-serve/fathom-operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OTEL_TRACES_EXPORTER"] == "none" and "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


def test_everything_off_renders_nothing_but_the_crds(helm):
    objs = helm.template(VALUE_SETS["everything-off"])
    assert [o for o in objs if o["kind"] != "CustomResourceDefinition"] == []


def test_everything_on_renders_every_optional_part(helm):
    objs = helm.template(EVERYTHING_ON)
    present = set(kinds(objs))
    assert {"ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "ConfigMap", "Service",
            "ModelService", "Tenant"} <= present
    (rule,) = by_kind(objs, "PrometheusRule")
    alerts = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    assert alerts == ["FathomTimeToFirstTokenHigh", "FathomKVCacheNearlyFull", "FathomErrorRateHigh",
                      "FathomReplicaMissing"]
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    (collector,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"].endswith("otel-collector")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= collector["spec"]["template"]["metadata"]["labels"].items()
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics" and sm["spec"]["namespaceSelector"] == {"any": True}


@pytest.mark.parametrize("values", [EVERYTHING_ON, NAMESPACED], ids=["everything-on", "namespaced"])
def test_prometheus_and_the_operator_send_the_same_scrape_key(helm, values):
    """Issue 12: with tenants on /metrics needs a key. The operator makes (and reads) the scrape key's
    Secret in the release namespace, its role may read just that Secret, and the ServiceMonitor
    sends the same Secret's `token` as a Bearer credential. The chart itself carries no key."""
    objs = helm.template({**values, "serviceMonitor": {"enabled": True}})
    (op,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "fathom-operator"]
    args = op["spec"]["template"]["spec"]["containers"][0]["args"]
    (ref,) = [a.split("=", 1)[1] for a in args if a.startswith("--metrics-key-secret=")]
    namespace, name = ref.split("/")
    assert namespace == op["metadata"]["namespace"] and name == "fathom-metrics-key"
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert sm["metadata"]["namespace"] == namespace  # a ServiceMonitor reads Secrets of its own namespace
    assert sm["spec"]["endpoints"][0]["authorization"] == {"type": "Bearer", "credentials": {"name": name, "key": "token"}}
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("operator-metrics-key")]
    assert role["metadata"]["namespace"] == namespace
    assert {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": ["get"]} in role["rules"]
    (binding,) = [b for b in by_kind(objs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert binding["subjects"][0]["name"] == op["spec"]["template"]["spec"]["serviceAccountName"]
    assert not by_kind(objs, "Secret")


def test_otlp_endpoint_reaches_the_operator_and_every_model_service(helm):
    objs = helm.template(EVERYTHING_ON)
    endpoint = "http://fathom-otel-collector.fathom.svc:4318"
    (op,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "fathom-operator"]
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf" and env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert "deployment.environment=prod" in env["OTEL_RESOURCE_ATTRIBUTES"]
    for ms in by_kind(objs, "ModelService"):
        ms_env = ms["spec"]["env"]
        assert ms_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
        attrs = ms_env["OTEL_RESOURCE_ATTRIBUTES"].split(",")
        assert f"fathom.model_service={ms['metadata']['name']}" in attrs
        assert f"service.namespace={ms['metadata']['namespace']}" in attrs and "deployment.environment=prod" in attrs
    r1 = next(ms for ms in by_kind(objs, "ModelService") if ms["metadata"]["name"] == "deepseek-r1")
    assert r1["spec"]["env"]["OTEL_SERVICE_NAME"] == "r1-serving", "a user's own env wins over the chart's"
    (svc,) = [s for s in by_kind(objs, "Service") if s["metadata"]["name"] == "fathom-otel-collector"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {4317, 4318}


def test_model_services_and_tenants_render_from_values(helm):
    objs = helm.template(TWO_MODELS_WITH_TENANTS)
    ms = {o["metadata"]["name"]: o for o in by_kind(objs, "ModelService")}
    assert set(ms) == {"deepseek-v3", "deepseek-r1"}
    assert ms["deepseek-v3"]["metadata"]["namespace"] == "fathom"
    assert ms["deepseek-r1"]["metadata"]["namespace"] == "research"
    assert ms["deepseek-r1"]["metadata"]["labels"]["team"] == "research"
    assert ms["deepseek-v3"]["spec"]["image"] == "ghcr.io/fathom-serve/fathom:0.1.0"
    assert ms["deepseek-v3"]["spec"]["engine"]["tensorParallelSize"] == 8
    tenants = {o["metadata"]["name"]: o for o in by_kind(objs, "Tenant")}
    assert tenants["team-a"]["spec"]["apiKeys"][1] == {"secretKeyRef": {"name": "team-a-keys", "key": "next"}}
    assert tenants["team-b"]["metadata"]["namespace"] == "research"
    assert all(o["apiVersion"] == "fathom.dev/v1alpha1" for o in list(ms.values()) + list(tenants.values()))
    # Ray pods are fenced in every namespace that holds a ModelService.
    fenced = {o["metadata"]["namespace"] for o in by_kind(objs, "NetworkPolicy")
              if o["metadata"]["name"] == "fathom-ray"}
    assert fenced == {"fathom", "research"}
    objs = helm.template({**TWO_MODELS_WITH_TENANTS, "networkPolicy": {"extraNamespaces": ["serving", "fathom"]}})
    assert {o["metadata"]["namespace"] for o in by_kind(objs, "NetworkPolicy")
            if o["metadata"]["name"] == "fathom-ray"} == {"fathom", "research", "serving"}


def test_image_digest_pins_the_platform_image(helm):
    objs = helm.template(EVERYTHING_ON)
    for ms in by_kind(objs, "ModelService"):
        assert ms["spec"]["image"] == "ghcr.io/fathom-serve/fathom@sha256:" + "a" * 64


def test_notes_tell_how_to_reach_the_api_and_send_a_request(helm):
    notes = helm.notes(TWO_MODELS_WITH_TENANTS)
    assert "kubectl -n fathom get modelservice deepseek-v3" in notes
    assert "kubectl -n fathom port-forward svc/deepseek-v3-api 8000:8000" in notes
    assert "/v1/chat/completions" in notes
    assert "get secret team-a-keys -o jsonpath='{.data.current}'" in notes
    assert "Authorization: Bearer $OPENAI_API_KEY" in notes
    default_notes = helm.notes()
    assert "No ModelService yet" in default_notes and "all namespaces" in default_notes


def test_namespaced_mode_watches_only_its_namespaces(helm):
    objs = helm.template(NAMESPACED)
    (deploy,) = by_kind(objs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=fathom", "--namespace=research"]
    roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "fathom-operator"]
    assert {r["metadata"]["namespace"] for r in roles} == {"fathom", "research"}
    assert len([b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"] == "fathom-operator"]) == 2
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"


def test_alerts_are_valid_promql_on_the_documented_metrics(helm):
    """Every alert parses (a real PromQL parser) and uses only metrics named in docs/metrics.md."""
    documented = set(re.findall(r"`(fathom_\w+)`", (ROOT / "docs" / "metrics.md").read_text()))
    (rule,) = by_kind(helm.template(EVERYTHING_ON), "PrometheusRule")
    for r in rule["spec"]["groups"][0]["rules"]:
        promql_parser.parse(r["expr"])  # raises ValueError naming the syntax error
        for metric in re.findall(r"\bfathom_\w+", r["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert base in documented, f"{r['alert']} uses {metric}, which the app does not export"
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (model (rate(fathom_requests_total[5m]))")


def test_names_stay_valid_for_the_longest_release_name(helm):
    release = "a-very-long-release-name-that-uses-all-53-characters"[:53]
    objs = helm.template(EVERYTHING_ON, release=release)
    for obj in objs:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        for key, value in obj["metadata"].get("labels", {}).items():
            assert len(value) <= 63, f"{obj['kind']}/{name} label {key}={value}"
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "two objects share a name"
