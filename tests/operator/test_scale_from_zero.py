"""Scale from zero across the real seam: the real Serve app (Ray, demo model) at zero model
replicas holds a request and exports it; the real operator's autoscaler reads that from the
app's /metrics, its policy asks for one replica, and the RayService it writes brings the replica
up; the held request then completes. No metric is faked.

KubeRay is the one stand-in: a task that applies each serveConfigV2 the operator writes to the
running Serve instance, as KubeRay does through the Ray dashboard (the worker pod the Ray
autoscaler would add is this machine's `fathom_worker` resource), with the Secrets the kubelet
would mount as files: a tenants file (tenants on) and the ModelService's auth Secret's scrape
key digest. So /metrics needs a key, and the operator reads it with its scrape key.
"""

import asyncio
import base64
import os
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from fathom.tenancy.registry import tenant_manifest
from fathom_operator import kube, scrape
from fathom_operator.reconcile import parse_spec
from fathom_operator.scaling_policy import decide
from support.operator_support import eventually, operator_running

pytestmark = pytest.mark.slow  # Ray, Serve and the demo model: about a minute on 2 cores

NS = "serving"
TEAM = {"Authorization": "Bearer sk-team"}
PLATFORM = str(Path(__file__).resolve().parents[2] / "platform")


@pytest.fixture
def serve_port(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [PLATFORM, os.environ.get("PYTHONPATH")])))
    ray.init(address="local", num_cpus=2, resources={"fathom_worker": 1000}, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, namespace="scale-from-zero")
    port = scrape_free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


def scrape_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _object(cluster, plural: str, name: str) -> dict | None:
    return next((o.raw for (res, _, n), o in cluster.objects.items()
                 if res.plural == plural and n == name and not o.deleted), None)


async def kuberay(cluster, deployed: list[int], mounts: Path) -> None:
    """Apply every new serveConfigV2 of the RayService to Serve (the proxy is already up), the
    pods' Secret mounts under `mounts`."""
    applied = None
    while True:
        raw = _object(cluster, "rayservices", "zero")
        config = raw and raw["spec"]["serveConfigV2"]
        auth = _object(cluster, "secrets", "zero-fathom-auth")
        if config and config != applied and auth is not None:
            (mounts / "metrics-key.sha256").write_bytes(base64.b64decode(auth["data"]["metrics-key.sha256"]))
            doc = {k: v for k, v in yaml.safe_load(config).items() if k not in ("http_options", "proxy_location")}
            args = doc["applications"][0]["args"]
            assert args["tenants"] == "/etc/fathom/tenants/tenants.yaml"
            assert args["metricsKeyFile"] == "/etc/fathom/auth/metrics-key.sha256"
            args.update(tenants=str(mounts / "tenants.yaml"), metricsKeyFile=str(mounts / "metrics-key.sha256"))
            await asyncio.to_thread(_get_global_client().deploy_apps, ServeDeploySchema.model_validate(doc))
            applied = config
            deployed.append(doc["applications"][0]["deployments"][0].get("num_replicas", 0))
        await asyncio.sleep(0.2)


def model_service(port: int) -> dict:
    return {"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "zero", "namespace": NS},
            "spec": {"engine": {"maxModelLen": 256, "maxNumSeqs": 4},  # the built-in demo model
                     "resources": {"gpus": 0, "cpu": 1, "memory": "2Gi"}, "replicas": 0,
                     "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "intervalSeconds": 0.5,
                                     "scaleToZeroAfterSeconds": 3600, "coldStartTimeoutSeconds": 240}}}


async def test_a_request_at_zero_replicas_wakes_the_model_and_completes(cluster, kubectl, serve_port, tmp_path):
    base = f"http://127.0.0.1:{serve_port}"
    deployed: list[int] = []
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump(tenant_manifest("team", ["sk-team"])))
    stand_in = asyncio.ensure_future(kuberay(cluster, deployed, tmp_path))
    try:
        metrics = ("--metrics-url-template", f"{base}/metrics",  # the app's /metrics, as the chart's Service would
                   "--metrics-key-secret", "fathom-system/fathom-metrics-key")
        async with operator_running(*metrics), httpx.AsyncClient(base_url=base, timeout=300) as http:
            await kubectl.create(kube.MODEL_SERVICES, NS, model_service(serve_port))
            await eventually(lambda: deployed == [0], timeout=60)
            await eventually(lambda: _ok(http, "/health"), timeout=120)  # the ingress runs, no model replica
            assert (await http.get("/metrics")).status_code == 401  # tenants on: no key, no metrics
            assert (await http.get("/metrics", headers=TEAM)).status_code == 403  # a user's key
            secret = await kubectl.get(kube.SECRETS, "fathom-system", "fathom-metrics-key")
            http.headers["Authorization"] = f"Bearer {base64.b64decode(secret['data']['token']).decode()}"

            body = {"model": "fathom-demo", "prompt": "Hello", "max_tokens": 4}
            request = asyncio.ensure_future(http.post("/v1/completions", json=body, headers=TEAM))
            page = await eventually(lambda: _held(http), timeout=60)

            # the series the operator reads, through the operator's own parser and policy
            sample = scrape.derive(None, scrape.parse(page, time.monotonic()))
            assert sample.waiting == 1 and sample.replicas == 0
            spec = parse_spec(model_service(serve_port)["spec"])
            assert decide([sample], spec.autoscaling, current=0).replicas == 1

            response = await asyncio.wait_for(request, 280)
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] >= 1
            assert deployed == [0, 1]  # the operator asked KubeRay for one replica, once
            status = (await kubectl.get(kube.MODEL_SERVICES, NS, "zero"))["status"]
            assert status["desiredReplicas"] == 1
            events = [o.raw for (res, _, _), o in cluster.objects.items() if res.plural == "events"]
            assert any("request queued while at zero" in e.get("message", "") for e in events)
            await eventually(lambda: _held(http, 0.0), timeout=30)
            replicas = await eventually(lambda: _replicas(http), timeout=60)  # what the dashboard plots
            assert replicas == {"fathom_model_replicas": 1.0, "fathom_model_replicas_desired": 1.0}
    finally:
        stand_in.cancel()


async def _ok(http: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await http.get(path)).status_code == 200
    except httpx.HTTPError:
        return False


async def _held(http: httpx.AsyncClient, count: float = 1.0) -> str | None:
    """The /metrics page once the ingress reports `count` held requests."""
    page = (await http.get("/metrics")).text
    for family in scrape.text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == scrape.WAITING and s.labels.get("replica") == "ingress" and s.value == count:
                return page
    return None


async def _replicas(http: httpx.AsyncClient) -> dict | None:
    """Running and desired model replicas on /metrics, once both say 1."""
    page = (await http.get("/metrics")).text
    found = {s.name: s.value for f in scrape.text_string_to_metric_families(page) for s in f.samples
             if s.name in ("fathom_model_replicas", "fathom_model_replicas_desired")}
    return found if found and all(v == 1 for v in found.values()) else None
