"""A review of `helm template` output for the chart's security promises, over every value set:
no Ray dashboard / job API / client / GCS port reachable from outside the cluster, every
container non-root with a read-only root filesystem, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp, and API keys only as Secret references."""

import pytest

from support.helm_value_sets import EVERYTHING_ON, VALUE_SETS

RAY_INTERNAL_PORTS = {6379, 8265, 10001, 52365}  # GCS, dashboard + job API, Ray client, dashboard agent
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


def pod_specs(objs: list[dict]):
    for obj in objs:
        if obj["kind"] in POD_KINDS:
            spec = obj["spec"]
            if obj["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            yield f"{obj['kind']}/{obj['metadata']['name']}", spec.get("template", {}).get("spec", spec)


def exposed_ports(svc: dict) -> set:
    ports = set()
    for p in svc["spec"].get("ports", []):
        ports.add(p["port"])
        if isinstance(p.get("targetPort"), int):
            ports.add(p["targetPort"])
    return ports


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request, helm):
    return request.param, helm.template(VALUE_SETS[request.param])


def test_no_ray_endpoint_is_exposed_outside_the_cluster(rendered):
    name, objs = rendered
    for obj in objs:
        if obj["kind"] == "Service":
            svc_type = obj["spec"].get("type", "ClusterIP")
            assert svc_type == "ClusterIP", f"{name}: Service {obj['metadata']['name']} is {svc_type}"
            assert not exposed_ports(obj) & RAY_INTERNAL_PORTS, f"{name}: {obj['metadata']['name']}"
        if obj["kind"] == "RayService":
            head = obj["spec"]["rayClusterConfig"]["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: Ray head service exposed"
        if obj["kind"] == "ModelService":
            port = obj["spec"].get("service", {}).get("port", 8000)
            assert port not in RAY_INTERNAL_PORTS, f"{name}: {obj['metadata']['name']} exposes Ray port {port}"
        if obj["kind"] == "Ingress":
            pytest.fail(f"{name}: the chart renders an Ingress ({obj['metadata']['name']})")


def test_every_container_is_locked_down(rendered):
    name, objs = rendered
    for where, pod in pod_specs(objs):
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, f"{name}: {where} pod may run as root"
        assert pod_ctx.get("runAsUser", 1) != 0, f"{name}: {where} runs as uid 0"
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True, where
        for c in pod.get("initContainers", []) + pod["containers"]:
            ctx = c.get("securityContext", {})
            what = f"{name}: {where} container {c['name']}"
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, f"{what} may run as root"
            assert ctx.get("readOnlyRootFilesystem") is True, f"{what} has a writable root filesystem"
            assert ctx.get("allowPrivilegeEscalation") is False, f"{what} allows privilege escalation"
            assert ctx.get("privileged", False) is False, f"{what} is privileged"
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{what} keeps capabilities"
            assert not ctx.get("capabilities", {}).get("add"), f"{what} adds capabilities"
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{what} has no RuntimeDefault seccomp profile"
            assert c.get("resources", {}).get("limits", {}).get("memory"), f"{what} has no memory limit"


def test_no_secret_material_in_rendered_objects(rendered):
    name, objs = rendered
    assert not [o for o in objs if o["kind"] == "Secret"], f"{name}: the chart must not carry Secrets"
    for obj in objs:
        if obj["kind"] == "Tenant":
            for key in obj["spec"]["apiKeys"]:
                assert set(key) == {"secretKeyRef"}, f"{name}: Tenant {obj['metadata']['name']} key {key}"
        for where, pod in pod_specs([obj]):
            for c in pod["containers"]:
                for env in c.get("env", []):
                    assert "KEY" not in env["name"] or "valueFrom" in env, f"{name}: {where} env {env['name']}"


def test_ray_dashboard_is_reachable_only_from_kuberay(helm):
    objs = helm.template(EVERYTHING_ON)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "fathom-ray"]
    assert len(policies) == 2
    for pol in policies:
        assert pol["spec"]["podSelector"] == {"matchExpressions": [{"key": "fathom.dev/model-service", "operator": "Exists"}]}
        for rule in pol["spec"]["ingress"]:
            ports = {p["port"] for p in rule.get("ports", [])}
            sources = rule.get("from")
            assert sources, f"a rule without sources must not exist in the locked-down set: {rule}"
            if ports & {8265, 52365}:
                assert ports == {8265, 52365}
                assert sources == [{"namespaceSelector": {},
                                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
            elif not ports:  # all ports: only from Ray pods of the same namespace
                ns = pol["metadata"]["namespace"]
                assert sources == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                                    "podSelector": {"matchExpressions": [
                                        {"key": "fathom.dev/model-service", "operator": "Exists"},
                                        {"key": "ray.io/cluster", "operator": "Exists"}]}}]
            else:
                assert not ports & RAY_INTERNAL_PORTS, rule


def test_default_network_policies_leave_ray_ports_closed(helm):
    (ray,) = [o for o in helm.template() if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "fathom-ray"]
    open_to_all = set()
    for rule in ray["spec"]["ingress"]:
        if "from" not in rule:
            open_to_all |= {p["port"] for p in rule["ports"]}
    assert open_to_all == {8000, 8080}, "only the API and metrics ports may be open to every source"


def test_operator_network_policy_limits_ingress_to_health_port(helm):
    (op,) = [o for o in helm.template() if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "fathom-operator"]
    assert op["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert op["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    egress_ports = {p["port"] for rule in op["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6443, 8000, 8080}


def _selects(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against a label set."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"Exists": key in labels, "DoesNotExist": key not in labels,
              "In": labels.get(key) in values, "NotIn": labels.get(key) not in values}[op]
        if not ok:
            return False
    return True


def admitted(policies: list[dict], target_ns: str, target: dict, src_ns: str, src: dict, port: int) -> bool:
    """NetworkPolicy semantics for ingress: a selected pod accepts what any policy's rule allows."""
    ns_labels = {"kubernetes.io/metadata.name": src_ns}
    selecting = [p for p in policies if p["metadata"]["namespace"] == target_ns and _selects(p["spec"]["podSelector"], target)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True  # not isolated
    for pol in selecting:
        for rule in pol["spec"].get("ingress") or []:
            if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    continue
                ns_ok = (src_ns == target_ns) if "namespaceSelector" not in peer else \
                    _selects(peer["namespaceSelector"], ns_labels)
                if ns_ok and _selects(peer.get("podSelector"), src):
                    return True
    return False


def test_only_ray_pods_of_the_same_namespace_reach_gcs_dashboard_and_client(helm):
    """Issue 12: a pod without the right labels or namespace is admitted by no NetworkPolicy to
    GCS (6379), the dashboard and job API (8265), the Ray client (10001) or the dashboard agent."""
    objs = helm.template(EVERYTHING_ON)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    (ns, *_) = sorted({p["metadata"]["namespace"] for p in policies if p["metadata"]["name"] == "fathom-ray"})
    head = {"fathom.dev/model-service": "m", "ray.io/cluster": "m-abc12", "ray.io/node-type": "head"}
    peer = {"fathom.dev/model-service": "m", "ray.io/cluster": "m-abc12", "ray.io/node-type": "worker"}
    kuberay = {"app.kubernetes.io/name": "kuberay-operator"}
    for port in (6379, 10001):
        assert admitted(policies, ns, head, ns, peer, port)
        assert not admitted(policies, ns, head, ns, {"app": "curl"}, port)
        assert not admitted(policies, ns, head, ns, {"fathom.dev/model-service": "fake"}, port)  # no KubeRay cluster
        assert not admitted(policies, ns, head, "attacker", peer, port)  # right labels, wrong namespace
        assert not admitted(policies, ns, head, "kuberay-system", kuberay, port)
    for port in (8265, 52365):
        assert admitted(policies, ns, head, "kuberay-system", kuberay, port)
        assert not admitted(policies, ns, head, ns, {"app": "curl"}, port)
        assert not admitted(policies, ns, head, "attacker", peer, port)
