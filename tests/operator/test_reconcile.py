"""The pure reconcile / render / apply functions, without an API server."""

import copy

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fathom_operator import pods, render
from fathom_operator.apply import merge, merge_patch
from fathom_operator.reconcile import Observed, parse_spec, reconcile

NOW = "2026-11-29T12:00:00Z"


def obj(generation=1, status=None, **spec) -> dict:
    base = {"model": {"pvc": {"claimName": "models"}}, "engine": {"tensorParallelSize": 8},
            "autoscaling": {"enabled": False}}
    base.update(spec)
    return {"metadata": {"name": "m", "namespace": "ns", "uid": "u-1", "generation": generation},
            "spec": base, "status": status or {}}


def running(ready_workers: int, app="RUNNING") -> dict:
    return {"status": {"activeServiceStatus": {"applicationStatuses": {"fathom": {"status": app, "message": "boom"}},
                                               "rayClusterStatus": {"readyWorkerReplicas": ready_workers}}}}


def test_reconcile_is_idempotent():
    first = reconcile(obj(), Observed(now=NOW))
    again = reconcile(obj(status=first.status), Observed(now="2026-11-29T13:00:00Z"))
    assert again.children == first.children and again.status == first.status


def test_condition_transition_time_moves_only_on_change():
    deploying = reconcile(obj(), Observed(now=NOW)).status
    ready = reconcile(obj(status=deploying), Observed(ray_service=running(1), now="T2")).status
    by_type = {c["type"]: c for c in ready["conditions"]}
    assert by_type["Ready"]["status"] == "True" and by_type["Ready"]["lastTransitionTime"] == "T2"
    assert by_type["Degraded"]["lastTransitionTime"] == NOW  # stayed False
    assert ready["phase"] == "Ready" and ready["readyReplicas"] == 1


@pytest.mark.parametrize("app, phase, ready_status", [
    ("DEPLOY_FAILED", "Degraded", "False"), ("DEPLOYING", "Deploying", "False"), ("RUNNING", "Ready", "True")])
def test_phase_follows_kuberay_status(app, phase, ready_status):
    status = reconcile(obj(), Observed(ray_service=running(1, app), now=NOW)).status
    assert status["phase"] == phase
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == ready_status


def test_scaled_to_zero_is_ready():
    status = reconcile(obj(replicas=0), Observed(ray_service=running(0), now=NOW)).status
    assert status["phase"] == "ScaledToZero" and status["replicas"] == 0


def test_autoscaler_decision_is_clamped_to_new_bounds():
    o = obj(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3}, status={"desiredReplicas": 7})
    result = reconcile(o, Observed(now=NOW))
    assert result.status["desiredReplicas"] == 3
    assert yaml.safe_load(result.children[0]["spec"]["serveConfigV2"])["applications"][0]["deployments"][0][
        "num_replicas"] == 3


def test_invalid_spec_names_every_field():
    message = parse_spec({"model": {"uri": "ftp://x"}, "engine": {"tensorParallelSize": 0}, "replicas": -1})
    assert "spec.model.uri" in message and "spec.engine.tensorParallelSize" in message and "spec.replicas" in message


def test_render_uri_source_fetches_weights_on_workers_and_tokenizer_on_head():
    spec = parse_spec({"model": {"uri": "hf://deepseek-ai/DeepSeek-V3@main"}, "engine": {"tensorParallelSize": 8}})
    rs = render.ray_service(spec, render.Owner("m", "ns", "u"), 1)
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "allow_patterns=[" in head["initContainers"][0]["command"][-1]
    assert "allow_patterns=None" in worker["initContainers"][0]["command"][-1]
    assert 'revision="main"' in worker["initContainers"][0]["command"][-1]
    assert {"name": "model", "emptyDir": {}} in worker["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in worker["volumes"]


def test_host_path_is_refused_unless_the_operator_allows_it():
    from fathom_operator.reconcile import Observed, reconcile

    obj = {"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
           "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 1},
           "spec": {"model": {"hostPath": "/etc"}}}
    refused = reconcile(obj, Observed(now="2026-12-03T16:00:00Z"))
    ready = next(c for c in refused.status["conditions"] if c["type"] == "Ready")
    assert refused.children is None and refused.status["phase"] == "Invalid" and ready["reason"] == "HostPathNotAllowed"
    allowed = reconcile(obj, Observed(now="2026-12-03T16:00:00Z", allow_host_path=True))
    assert allowed.children and allowed.status["phase"] != "Invalid"
    with pytest.raises(ValueError, match=r"\.\."):
        from fathom.api.model_service import ModelSource
        ModelSource(pvc={"claimName": "c"}, path="a/../../etc")


def test_render_placement_and_tenants_mount():
    spec = parse_spec({"model": {"hostPath": "/mnt/models"}, "resources": {
        "nodeSelector": {"gpu": "h200"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}})
    worker = render.worker_group(spec, render.Owner("m", "ns", "u"), 2)
    pod = worker["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h200"} and pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert {"name": "tenants", "secret": {"secretName": "fathom-tenants", "optional": True}} in pod["volumes"]
    assert worker["replicas"] == 2 and worker["maxReplicas"] == 4  # autoscaling on by default: max 4


@pytest.mark.parametrize("q, k, out", [(8, 4, "32"), ("500m", 4, "2000m"), ("64Gi", 8, "512Gi"), ("1.5", 2, "3")])
def test_scale_quantity(q, k, out):
    assert pods.scale_quantity(q, k) == out


def test_merge_keeps_foreign_fields_and_drops_only_ours():
    last = {"metadata": {"labels": {"ours": "1", "old": "x"}},
            "spec": {"containers": [{"name": "a", "image": "v1", "env": [{"name": "OURS", "value": "1"}]}]}}
    observed = copy.deepcopy(last)
    observed["metadata"]["labels"]["theirs"] = "y"
    observed["spec"]["containers"][0]["env"].append({"name": "THEIRS", "value": "2"})
    observed["spec"]["containers"].append({"name": "sidecar", "image": "istio"})
    desired = {"metadata": {"labels": {"ours": "2"}},
               "spec": {"containers": [{"name": "a", "image": "v2", "env": [{"name": "OURS", "value": "1"}]}]}}
    target = merge(observed, last, desired)
    assert target["metadata"]["labels"] == {"ours": "2", "theirs": "y"}
    assert [c["name"] for c in target["spec"]["containers"]] == ["a", "sidecar"]
    assert target["spec"]["containers"][0]["image"] == "v2"
    assert {"name": "THEIRS", "value": "2"} in target["spec"]["containers"][0]["env"]
    patch = merge_patch(observed, target)
    assert patch["metadata"]["labels"] == {"ours": "2", "old": None}
    assert merge_patch(target, merge(target, desired, desired)) == {}


def test_zero_replicas_is_a_count_serve_accepts():
    """Serve's config schema wants num_replicas >= 1: zero is autoscaling pinned to [0, 1] from 0."""
    spec = parse_spec({"autoscaling": {"minReplicas": 0, "coldStartTimeoutSeconds": 42}})
    app = yaml.safe_load(render.ray_service(spec, render.Owner("m", "ns", "u"), 0)["spec"]["serveConfigV2"])
    [deployment] = app["applications"][0]["deployments"]
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}
    assert app["applications"][0]["args"]["coldStartTimeoutS"] == 42
    ServeDeploySchema.parse_obj(app)  # Ray Serve's own validation, as the dashboard applies it


def test_scaling_changes_only_what_kuberay_and_serve_apply_in_place():
    """Replica counts live in the worker group and the deployment override; the app args and the
    rest of the cluster spec (KubeRay's hash) stay identical, so nothing restarts."""
    spec = parse_spec({"engine": {"tensorParallelSize": 8}})
    one, three = (render.ray_service(spec, render.Owner("m", "ns", "u"), n) for n in (1, 3))
    apps = [yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0] for rs in (one, three)]
    assert apps[0]["args"] == apps[1]["args"] and apps[0]["import_path"] == apps[1]["import_path"]
    assert [[(d["name"], d["num_replicas"]) for d in a["deployments"]] for a in apps] == [[("model", 1)],
                                                                                         [("model", 3)]]
    assert apps[0]["deployments"][0]["ray_actor_options"] == apps[1]["deployments"][0]["ray_actor_options"]

    def unscaled(rs):
        cluster = copy.deepcopy(rs["spec"]["rayClusterConfig"])
        for group in cluster["workerGroupSpecs"]:
            for key in ("replicas", "minReplicas", "maxReplicas"):
                group.pop(key)
        return cluster
    assert unscaled(one) == unscaled(three)


def test_endpoint_is_the_load_balancer_once_it_has_one():
    o = obj(service={"type": "LoadBalancer", "port": 80})
    assert reconcile(o, Observed(now=NOW)).status["endpoint"] == "http://m-api.ns.svc:80"
    lb = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}
    assert reconcile(o, Observed(service=lb, now=NOW)).status["endpoint"] == "http://203.0.113.7:80"


@pytest.mark.parametrize("tp, gpus, cpus, want_gpus", [(1, 1, 0, 1), (8, 1, 0, 0), (1, 0, 1, 0), (2, 0, 0, 0)])
def test_model_replicas_stay_off_the_head(tp, gpus, cpus, want_gpus):
    spec = parse_spec({"engine": {"tensorParallelSize": tp}, "resources": {"gpus": gpus}})
    options = render.model_actor_options(spec)
    assert options == {"num_cpus": cpus, "num_gpus": want_gpus, "resources": {"fathom_worker": 1}}
    worker = render.worker_group(spec, render.Owner("m", "ns", "u"), 1)
    assert worker["rayStartParams"]["resources"] == '"{\\"fathom_worker\\": 1000}"'
    head = render.head_group(spec, render.Owner("m", "ns", "u"))
    assert "resources" not in head["rayStartParams"] and head["rayStartParams"]["num-cpus"] == "0"


def test_progressing_while_kuberay_catches_up():
    rs = running(1)
    rs["metadata"] = {"generation": 3}
    rs["status"]["observedGeneration"] = 2
    by_type = {c["type"]: c for c in reconcile(obj(), Observed(ray_service=rs, now=NOW)).status["conditions"]}
    assert by_type["Ready"]["status"] == "True" and by_type["Progressing"]["reason"] == "RayServiceUpdating"
    rs["status"]["observedGeneration"] = 3
    by_type = {c["type"]: c for c in reconcile(obj(), Observed(ray_service=rs, now=NOW)).status["conditions"]}
    assert by_type["Progressing"]["status"] == "False"


@pytest.mark.parametrize("source", [None, {"uri": "s3://bucket/dsv3"}, {"pvc": {"claimName": "weights"}}])
def test_ray_pods_run_read_only_with_writable_scratch(source):
    spec = parse_spec({"model": source, "resources": {"gpus": 1}} if source else {"resources": {"gpus": 1}})
    cluster = render.ray_service(spec, render.Owner("m", "ns", "u"), 1)["spec"]["rayClusterConfig"]
    head, worker = cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]
    for pod in (head, worker):
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["fsGroup"] == 100
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert {m for m in mounts.values()} <= volumes.keys(), f"{c['name']} mounts a missing volume"
            assert "emptyDir" in volumes[mounts["/tmp"]], c["name"]
        ray = pod["containers"][0]
        assert "emptyDir" in volumes[{m["mountPath"]: m["name"] for m in ray["volumeMounts"]}["/home/ray/.cache"]]
        for c in pod.get("initContainers", []):  # the fetcher's tools keep state under $HOME
            assert {"name": "HOME", "value": "/tmp"} in c["env"]
    worker_mounts = {m["mountPath"]: m["name"] for m in worker["containers"][0]["volumeMounts"]}
    assert {v["name"]: v for v in worker["volumes"]}[worker_mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}
    autoscaler = cluster["autoscalerOptions"]
    assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False
    assert {m["name"] for m in autoscaler["volumeMounts"]} <= {v["name"] for v in head["volumes"]}


def test_ray_containers_run_with_serve_throughput_settings_unless_spec_env_says_otherwise():
    spec = parse_spec({"env": {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "0"}})
    cluster = render.ray_service(spec, render.Owner("m", "ns", "u"), 1)["spec"]["rayClusterConfig"]
    for group in (cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]):
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "0"  # the user's choice
        assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"  # the proxy reads these too
        assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in env


def test_every_ray_container_runs_with_ray_token_auth_from_the_model_services_secret():
    """Issue 12: KubeRay's authOptions name the ModelService's auth Secret (KubeRay's data key
    `auth_token`), and every Ray container carries RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from it
    (spec.env may set neither: refused with the field named)."""
    refused = parse_spec({"env": {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "guessable"}})
    assert isinstance(refused, str) and "spec.env" in refused and "RAY_AUTH_MODE, RAY_AUTH_TOKEN" in refused
    spec = parse_spec({"env": {"OTEL_SERVICE_NAME": "mine"}})
    rs = render.ray_service(spec, render.Owner("m", "ns", "u"), 2)
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "m-fathom-auth"}
    containers = [c for g in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])
                  for c in g["template"]["spec"]["containers"]]
    assert {c["name"] for c in containers} == {"ray-head", "ray-worker"}
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, c["name"]
        assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "m-fathom-auth", "key": "auth_token"}}}, c["name"]
        assert env["OTEL_SERVICE_NAME"]["value"] == "mine"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/etc/fathom/auth"] == "auth"
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        auth = {v["name"]: v for v in group["template"]["spec"]["volumes"]}["auth"]
        # only the scrape key's digest is a file; the token stays an env var of the Ray container
        assert auth["secret"] == {"secretName": "m-fathom-auth",
                                  "items": [{"key": "metrics-key.sha256", "path": "metrics-key.sha256"}]}
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["metricsKeyFile"] == "/etc/fathom/auth/metrics-key.sha256"
