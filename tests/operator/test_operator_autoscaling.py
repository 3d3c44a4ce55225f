"""The autoscaler end to end: the real operator reads /metrics from a real local HTTP server
(the app's metric names, rendered by prometheus_client) and scales the RayService.

Timing-free assertions: the loop is scrape → decide → write → sleep, so "within one interval"
means the RayService already shows the new count when the *next* scrape arrives; each scrape
logs the replica count the cluster holds at that moment.
"""

import base64
import hashlib
import time

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fathom_operator import kube
from support.operator_support import eventually, operator_running

NS = "serving"
WINDOW, IDLE, INTERVAL = 2.0, 3.0, 0.25


class FakeLoad:
    """The app's /metrics for a load we set; each scrape records the RayService's replicas."""

    def __init__(self, cluster):
        self.cluster, self.waiting, self.running, self.kv = cluster, {}, {}, {}
        self.tokens = 0
        self.log: list[tuple[float, int | None]] = []
        self.keys: set[str] = set()

    def replicas(self) -> int | None:
        for (res, _, name), o in self.cluster.objects.items():
            if res.plural == "rayservices" and name == "auto" and not o.deleted:
                serve = yaml.safe_load(o.raw["spec"]["serveConfigV2"])
                return serve["applications"][0]["deployments"][0].get("num_replicas", 0)  # 0: Serve autoscaling [0, 1]
        return None

    def scrape_digest(self) -> str | None:
        """The scrape key's digest in the ModelService's auth Secret: what its pods' ingress
        reads from the mounted Secret (`metricsKeyFile`)."""
        for (res, _, name), o in self.cluster.objects.items():
            if res.plural == "secrets" and name == "auto-fathom-auth" and not o.deleted:
                return base64.b64decode(o.raw["data"]["metrics-key.sha256"]).decode().strip() or None
        return None

    async def metrics(self, request: web.Request) -> web.Response:
        # as the app with tenants on: only the scrape key whose digest the auth Secret holds
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.keys.add(key)
        if self.scrape_digest() is None or hashlib.sha256(key.encode()).hexdigest() != self.scrape_digest():
            return web.Response(status=401)
        self.log.append((time.monotonic(), self.replicas()))
        reg = CollectorRegistry()
        w = Gauge("fathom_requests_waiting", "", ["model", "replica"], registry=reg)
        r = Gauge("fathom_requests_running", "", ["model", "replica"], registry=reg)
        k = Gauge("fathom_kv_cache_usage_ratio", "", ["model", "replica"], registry=reg)
        Counter("fathom_generation_tokens", "", ["model", "tenant"], registry=reg).labels("m", "t").inc(self.tokens)
        for name, value in self.waiting.items():
            w.labels("m", name).set(value)
        for name, value in self.running.items():
            r.labels("m", name).set(value)
        for name, value in self.kv.items():
            k.labels("m", name).set(value)
        return web.Response(body=generate_latest(reg), content_type="text/plain")

    def since(self, t: float) -> list[int | None]:
        return [n for when, n in self.log if when >= t]


@pytest.mark.slow  # ~9 s: waits out real scale-up and idle windows
async def test_load_drives_replicas(cluster, kubectl):
    load = FakeLoad(cluster)
    app = web.Application()
    app.router.add_get("/metrics", load.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    ms = {"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
          "metadata": {"name": "auto", "namespace": NS},
          "spec": {"model": {"pvc": {"claimName": "models"}}, "engine": {"tensorParallelSize": 2},
                   "resources": {"gpus": 1, "gpusPerNode": 1},  # 2 worker pods per instance
                   "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "intervalSeconds": INTERVAL,
                                   "scaleDownStabilizationSeconds": WINDOW, "scaleToZeroAfterSeconds": IDLE,
                                   "targets": {"waitingRequestsPerReplica": 2, "kvCacheUtilization": 0.8}}}}
    load.running, load.kv, load.tokens = {"r0": 2}, {"r0": 0.5}, 100
    try:
        async with operator_running("--metrics-url-template", f"http://127.0.0.1:{port}/metrics",
                                    "--metrics-key-secret", "fathom-system/fathom-metrics-key"):
            await kubectl.create(kube.MODEL_SERVICES, NS, ms)
            await eventually(lambda: load.replicas() == 1 and len(load.log) >= 2)
            scrape_key = base64.b64decode((await kubectl.get(kube.SECRETS, "fathom-system", "fathom-metrics-key"))
                                          ["data"]["token"]).decode()
            assert len(scrape_key) >= 32 and load.keys == {scrape_key}  # every scrape sent it

            # load up: 7 queued -> ceil(7 / 2) = 4, applied before the next scrape
            load.waiting = {"r0": 7}
            t_up = time.monotonic()
            await eventually(lambda: len(load.since(t_up)) >= 3)
            assert load.since(t_up)[1] == 4, load.since(t_up)
            rs = (await kubectl.get(kube.RAY_SERVICES, NS, "auto"))["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
            assert rs["replicas"] == rs["minReplicas"] == 8
            status = (await kubectl.get(kube.MODEL_SERVICES, NS, "auto"))["status"]
            assert status["desiredReplicas"] == 4 and status["lastScaleTime"]
            events = await eventually(lambda: [e for e in _objects(cluster, "events") if e.get("reason") == "Scaled"])
            assert "replicas 1 -> 4" in events[-1]["message"]

            # load down to what 2 replicas hold: nothing changes until the window has passed
            load.waiting, load.running = {}, {f"r{i}": 2 for i in range(4)}
            load.kv = {f"r{i}": 0.35 for i in range(4)}  # sum 1.4 / 0.8 -> 2
            t_down = time.monotonic()
            await eventually(lambda: load.replicas() == 2, timeout=20)
            held = [n for when, n in load.log if t_down <= when < t_down + WINDOW - INTERVAL]
            assert held and set(held) == {4}, held

            # idle: zero after the idle period, not before
            load.running, load.kv, t_idle = {}, {}, time.monotonic()
            await eventually(lambda: load.replicas() == 0, timeout=20)
            early = [n for when, n in load.log if t_idle <= when < t_idle + IDLE - INTERVAL]
            assert early and 0 not in early, early
            ms_now = await kubectl.get(kube.MODEL_SERVICES, NS, "auto")
            assert ms_now["status"]["desiredReplicas"] == 0

            # a request queued at the ingress (on the Ray head) while at zero brings back one replica
            load.waiting, t_wake = {"ingress": 1}, time.monotonic()
            await eventually(lambda: len(load.since(t_wake)) >= 3)
            assert load.since(t_wake)[1] == 1, load.since(t_wake)
    finally:
        await runner.cleanup()


def _objects(api, plural: str) -> list[dict]:
    return [o.raw for (res, _, _), o in api.objects.items() if res.plural == plural and not o.deleted]


def test_metrics_come_from_the_owned_service_never_from_an_annotation():
    """Issue 12: whoever may edit a ModelService must not aim the operator's requests anywhere."""
    from fathom_operator.autoscaler import metrics_url

    obj = {"apiVersion": "fathom.dev/v1alpha1", "kind": "ModelService",
           "metadata": {"name": "m", "namespace": "ns", "uid": "u1",
                        "annotations": {"fathom.dev/metrics-url": "http://169.254.169.254/latest/meta-data"}},
           "spec": {}}
    url = metrics_url(obj, 8000)
    assert "169.254" not in url and url.startswith("http://") and ".ns.svc:8000/metrics" in url
