"""Rollouts of a ModelService change: which KubeRay upgrade strategy, what it will do, how far it is.

Pure functions. `strategy` picks KubeRay's `upgradeStrategy` from `spec.upgrade` and what the
installed RayService CRD supports (`supports_incremental`). `kind` says whether a change of the
rendered RayService rolls out in place (only the Serve config or replica counts changed: KubeRay
applies them to the running cluster) or needs a new cluster (the pod templates changed).
`progress` reads a rollout in flight from the RayService status KubeRay writes.
"""

import copy

from fathom.api.model_service import ModelServiceSpec

INCREMENTAL = "NewClusterWithIncrementalUpgrade"
_SCALED = ("replicas", "minReplicas", "maxReplicas")  # KubeRay leaves these out of its cluster hash


def supports_incremental(crd: dict | None) -> bool:
    """Whether a RayService CRD's served v1 schema has `upgradeStrategy.clusterUpgradeOptions`."""
    for version in ((crd or {}).get("spec") or {}).get("versions") or []:
        if version.get("name") != "v1":
            continue
        props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        return "clusterUpgradeOptions" in (props.get("upgradeStrategy") or {}).get("properties", {})
    return False


def strategy(spec: ModelServiceSpec, incremental_supported: bool) -> tuple[dict, str | None]:
    """(the RayService's upgradeStrategy, a warning when the spec's wish cannot be honoured)."""
    up = spec.upgrade
    if up.strategy == "NewCluster":
        return {"type": "NewCluster"}, None
    if not incremental_supported:
        return {"type": "NewCluster"}, ("upgrade.strategy Incremental needs KubeRay >= 1.5.1 (the installed RayService "
                                        "CRD has no upgradeStrategy.clusterUpgradeOptions); rollouts use NewCluster, "
                                        "which needs twice the GPUs while pods change")
    options = {"gatewayClassName": up.gateway_class_name, "maxSurgePercent": up.max_surge_percent,
               "stepSizePercent": up.step_size_percent, "intervalSeconds": up.interval_seconds}
    return {"type": INCREMENTAL, "clusterUpgradeOptions": options}, None


def _cluster(ray_service: dict) -> dict:
    cluster = copy.deepcopy(((ray_service or {}).get("spec") or {}).get("rayClusterConfig") or {})
    for group in cluster.get("workerGroupSpecs") or []:
        for key in _SCALED:
            group.pop(key, None)
    return cluster


def kind(before: dict | None, after: dict) -> str | None:
    """How KubeRay rolls `before` -> `after` (rendered RayServices) out: None (nothing changed, or
    a new object), "InPlace" (Serve config or replica counts) or "NewCluster" (pods change)."""
    if before is None or before.get("spec") == after.get("spec"):
        return None
    return "InPlace" if _cluster(before) == _cluster(after) else "NewCluster"


def progress(ray_service: dict | None) -> tuple[str, str] | None:
    """(reason, message) of a new-cluster rollout KubeRay has in flight; None when there is none."""
    status = (ray_service or {}).get("status") or {}
    pending = status.get("pendingServiceStatus") or {}
    if not pending.get("rayClusterName"):
        return None
    app = ((pending.get("applicationStatuses") or {}).get("fathom") or {}).get("status") or "NOT_STARTED"
    if "targetCapacity" in pending or "trafficRoutedPercent" in pending:
        return "IncrementalUpgrade", (f"incremental upgrade to {pending['rayClusterName']}: capacity "
                                      f"{pending.get('targetCapacity', 0)}%, traffic {pending.get('trafficRoutedPercent', 0)}%, "
                                      f"Serve app {app}")
    return "NewClusterUpgrade", (f"new cluster {pending['rayClusterName']} starting (Serve app {app}); "
                                 "traffic switches when it serves")
