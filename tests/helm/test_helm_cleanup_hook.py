"""`helm uninstall` must not leave ModelServices hanging in Terminating: the operator's
finalizers can only be removed while it runs, so a pre-delete hook deletes the release's
ModelServices and Tenants first. Shown with the hook's own script against the emulated API
server and the real operator: with it running everything goes; without, the hook fails,
naming what is left."""

import asyncio
import json
import os
import subprocess
import sys

import kopf
import pytest

from fathom_operator import kube
from support.helm_support import CHART
from support.helm_value_sets import DEEPSEEK_V3, EVERYTHING_ON, TEAM_A, TWO_MODELS_WITH_TENANTS
from support.operator_support import emulated_cluster, eventually, operator_running, write_kubeconfig

NS = "fathom"
HOOK = "helm.sh/hook"


def hooks(objs: list[dict]) -> list[dict]:
    return [o for o in objs if (o["metadata"].get("annotations") or {}).get(HOOK)]


def test_hook_is_rendered_only_for_releases_with_resources(helm):
    assert hooks(helm.template()) == []
    objs = hooks(helm.template(TWO_MODELS_WITH_TENANTS))
    assert {o["metadata"]["annotations"][HOOK] for o in objs} == {"pre-delete"}
    (job,) = [o for o in objs if o["kind"] == "Job"]
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["FATHOM_CLEANUP"]) == [["modelservices", "fathom", "deepseek-v3"],
                                                 ["modelservices", "research", "deepseek-r1"],
                                                 ["tenants", "fathom", "team-a"], ["tenants", "research", "team-b"]]
    roles = [o for o in objs if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["fathom", "research"]
    assert all(r["rules"] == [{"apiGroups": ["fathom.dev"], "resources": ["modelservices", "tenants"],
                               "verbs": ["get", "delete"]}] for r in roles)
    (config,) = [o for o in objs if o["kind"] == "ConfigMap"]
    assert config["data"]["cleanup.py"].strip() == (CHART / "files" / "cleanup.py").read_text().strip()
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in objs}
    assert weights["Job"] > max(w for k, w in weights.items() if k != "Job"), "RBAC and script before the Job"
    assert hooks(helm.template({**EVERYTHING_ON, "cleanupHook": {"enabled": False}})) == []


def run_hook(api_url: str, targets: list, timeout: int) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "KUBE_API_URL": api_url, "FATHOM_CLEANUP": json.dumps(targets),
           "FATHOM_CLEANUP_TIMEOUT": str(timeout)}
    return subprocess.run([sys.executable, str(CHART / "files" / "cleanup.py")], check=False, env=env,
                          capture_output=True, text=True, timeout=timeout + 30)


def live(api, plural: str) -> set[str]:
    return {n for (res, _, n), o in api.objects.items() if res.plural == plural and not o.deleted}


@pytest.mark.parametrize("operator_up", [True, False], ids=["operator-running", "operator-gone"])
async def test_hook_deletes_what_the_release_created(helm, tmp_path, monkeypatch, operator_up):
    objs = helm.template({"modelServices": [DEEPSEEK_V3], "tenants": [TEAM_A]})
    created = [o for o in objs if o["kind"] in ("ModelService", "Tenant")]
    (job,) = [o for o in hooks(objs) if o["kind"] == "Job"]
    targets = json.loads(job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
    async with emulated_cluster() as api:
        url = str(api.url).rstrip("/")
        write_kubeconfig(tmp_path / "kubeconfig", url)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        client = kube.KubeClient(kopf.ConnectionInfo(server=url))
        try:
            async with operator_running("--tenant-resync-seconds", "0.5"):
                for obj in created:
                    ref = kube.MODEL_SERVICES if obj["kind"] == "ModelService" else kube.TENANTS
                    await client.create(ref, NS, obj)
                await eventually(lambda: "deepseek-v3" in live(api, "rayservices"))
                await eventually(lambda: all(o.raw["metadata"].get("finalizers") for (res, _, n), o
                                             in api.objects.items() if res.plural in ("modelservices", "tenants")))
                if operator_up:
                    out = await asyncio.to_thread(run_hook, url, targets, 60)
            if not operator_up:  # helm would have deleted the operator first
                out = await asyncio.to_thread(run_hook, url, targets, 3)
        finally:
            await client.close()
    if operator_up:
        assert out.returncode == 0, out.stderr
        assert not live(api, "modelservices") and not live(api, "tenants")
        assert not live(api, "rayservices"), "the RayService (and its GPUs) must go with its ModelService"
    else:
        assert out.returncode == 1
        assert "modelservices fathom/deepseek-v3 still exists: is the Fathom operator running?" in out.stderr

