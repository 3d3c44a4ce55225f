"""The model cache of a `uri` checkpoint (`spec.model.cache`): pure renderings.

Worker pods keep `/models` an emptyDir and mount the cache at `/model-cache`; an init container
makes `/models/<key>` (the checkpoint root the engine is given) a symlink into the cache once the
checkpoint is complete there (marker file `.fathom-complete`, written last), so ranks read their
slices straight from the cache:

- Node: a hostPath directory. The first pod on a node downloads into `<key>.partial` under a
  `flock`, renames it and writes the marker; the others wait on the lock and link. When the
  directory is not writable (not prepared for uid 1000) the pod downloads into its own emptyDir
  instead and says so: slower, never stuck.
- Shared: a ReadWriteMany claim (given, or `<name>-model-cache` created here), filled once by the
  Job `<name>-model-cache-<key>`; pods mount it read-only and wait for the marker.
"""

import shlex

from fathom.api.model_service import MODEL_MOUNT_PATH, ModelServiceSpec
from fathom_operator import pods

CACHE_MOUNT_PATH = pods.CACHE_MOUNT_PATH
MARKER = ".fathom-complete"


def _paths(spec: ModelServiceSpec) -> tuple[str, str]:
    """(the checkpoint in the cache, its link under /models), shell-quoted."""
    key = spec.model.cache_key
    return shlex.quote(f"{CACHE_MOUNT_PATH}/{key}"), shlex.quote(f"{MODEL_MOUNT_PATH}/{key}")


def claim_name(spec: ModelServiceSpec, owner_name: str) -> str:
    return spec.model.cache.claim_name or f"{owner_name}-model-cache"


def volume(spec: ModelServiceSpec, owner_name: str) -> dict | None:
    """The cache volume of a worker pod; None without a cache."""
    if spec.model is None or not spec.model.cached:
        return None
    cache = spec.model.cache
    if cache.type == "Node":
        return {"name": "model-cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    return {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim_name(spec, owner_name),
                                                             "readOnly": True}}


def _fill(spec: ModelServiceSpec, cached: str) -> str:
    """Download into `<cached>.partial`, then rename and mark complete (idempotent)."""
    partial = shlex.quote(f"{CACHE_MOUNT_PATH}/{spec.model.cache_key}.partial")
    fetch = pods.fetch_command(spec.model.uri, f"{CACHE_MOUNT_PATH}/{spec.model.cache_key}.partial",
                               tokenizer_only=False)
    return (f"if [ ! -f {cached}/{MARKER} ]; then rm -rf {partial}; {fetch}; rm -rf {cached}; "
            f"mv {partial} {cached}; touch {cached}/{MARKER}; fi")


def node_script(spec: ModelServiceSpec) -> str:
    cached, link = _paths(spec)
    lock = shlex.quote(f"{CACHE_MOUNT_PATH}/{spec.model.cache_key}.lock")
    direct = pods.fetch_command(spec.model.uri, f"{MODEL_MOUNT_PATH}/{spec.model.cache_key}", tokenizer_only=False)
    return (f"if [ -f {cached}/{MARKER} ]; then ln -sfn {cached} {link}; "
            f"elif ( : >> {lock} ) 2>/dev/null; then exec 9>>{lock}; flock 9; {_fill(spec, cached)}; "
            f"ln -sfn {cached} {link}; "
            f"else echo 'fathom: node cache {spec.model.cache.host_path} is not writable by uid '$(id -u)'; "
            f"downloading into the pod' >&2; {direct}; fi")


def wait_script(spec: ModelServiceSpec) -> str:
    cached, link = _paths(spec)
    return (f"until [ -f {cached}/{MARKER} ]; do echo 'fathom: waiting for the model cache Job'; sleep 10; done; "
            f"ln -sfn {cached} {link}")


def worker_init_containers(spec: ModelServiceSpec) -> list[dict]:
    """The init container that links (and on a node, fills) the cache."""
    node = spec.model.cache.type == "Node"
    return [{
        "name": "fetch-model" if node else "wait-model-cache",
        "image": spec.model.fetch_image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["/bin/sh", "-c", "set -eu; " + (node_script(spec) if node else wait_script(spec))],
        "env": pods.env_vars(spec, defaults={"HOME": "/tmp"}),
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT_PATH},
                         {"name": "model-cache", "mountPath": CACHE_MOUNT_PATH, "readOnly": not node},
                         {"name": "tmp", "mountPath": pods.SCRATCH_DIRS["tmp"]}],
        "securityContext": pods.container_security_context(),
    }]


def claim(spec: ModelServiceSpec, metadata: dict) -> dict | None:
    """The ReadWriteMany claim the operator creates for a Shared cache (None if one is given)."""
    if spec.model is None or not spec.model.cached or spec.model.cache.type != "Shared" or spec.model.cache.claim_name:
        return None
    claim_spec = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": str(spec.model.cache.size)}}}
    if spec.model.cache.storage_class_name:
        claim_spec["storageClassName"] = spec.model.cache.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": claim_spec}


def fill_job(spec: ModelServiceSpec, metadata: dict, owner_name: str) -> dict | None:
    """The Job that fills a Shared cache once (it exits at once when the checkpoint is there)."""
    if spec.model is None or not spec.model.cached or spec.model.cache.type != "Shared":
        return None
    cached, _ = _paths(spec)
    container = {
        "name": "fill-model-cache", "image": spec.model.fetch_image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["/bin/sh", "-c", "set -eu; " + _fill(spec, cached)],
        "env": pods.env_vars(spec, defaults={"HOME": "/tmp"}),
        "volumeMounts": [{"name": "model-cache", "mountPath": CACHE_MOUNT_PATH},
                         {"name": "tmp", "mountPath": pods.SCRATCH_DIRS["tmp"]}],
        "securityContext": pods.container_security_context(),
    }
    pod = {"restartPolicy": "OnFailure", "containers": [container],
           "volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": claim_name(spec, owner_name)}},
                       {"name": "tmp", "emptyDir": {}}],
           "securityContext": pods.pod_security_context()}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
            "spec": {"backoffLimit": 10, "template": {"metadata": {"labels": metadata["labels"]}, "spec": pod}}}
