"""Pod-level pieces of the rendered RayService: quantities, volumes, the model fetcher, env.

Pure functions of a validated `ModelServiceSpec`; no Kubernetes client here.
"""

import json
import shlex
from decimal import Decimal

from fathom.api.model_service import MODEL_MOUNT_PATH, ModelServiceSpec

TENANTS_MOUNT_PATH = "/etc/fathom/tenants"
TENANTS_FILE = f"{TENANTS_MOUNT_PATH}/tenants.yaml"
_SUFFIXES = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "")


def scale_quantity(quantity: int | str, factor: int) -> str:
    """`quantity` × `factor`, keeping its unit: ("64Gi", 8) → "512Gi", ("500m", 4) → "2000m"."""
    text = str(quantity).strip()
    suffix = next(s for s in _SUFFIXES if text.endswith(s) and s != text)
    number = Decimal(text[: len(text) - len(suffix)] if suffix else text) * factor
    return f"{number.normalize():f}{suffix}"


def model_volume(spec: ModelServiceSpec) -> dict | None:
    """The volume mounted at /models: the PVC, the hostPath, or an emptyDir the fetcher fills."""
    src = spec.model
    if src is None:
        return None  # the built-in demo model is generated in the pod
    if src.pvc is not None:
        return {"name": "model", "persistentVolumeClaim": {"claimName": src.pvc.claim_name, "readOnly": src.pvc.read_only}}
    if src.host_path is not None:
        return {"name": "model", "hostPath": {"path": src.host_path, "type": "Directory"}}
    return {"name": "model", "emptyDir": {}}


def fetch_command(uri: str, dest: str, *, tokenizer_only: bool) -> str:
    """Shell command that downloads the checkpoint at `uri` into `dest` (idempotent).

    `tokenizer_only` (for the head, which tokenizes but holds no weights) skips *.safetensors.
    """
    scheme, rest = uri.split("://", 1)
    q_dest = shlex.quote(dest)
    if scheme == "hf":
        repo, _, revision = rest.partition("@")
        patterns = '["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken"]' if tokenizer_only else "None"
        script = (
            "from huggingface_hub import snapshot_download; "
            f"snapshot_download({json.dumps(repo)}, revision={json.dumps(revision) if revision else 'None'}, "
            f"local_dir={json.dumps(dest)}, allow_patterns={patterns})"
        )
        return f"python -c {shlex.quote(script)}"
    src = shlex.quote(uri.rstrip("/") + "/")
    if scheme == "s3":
        exclude = " --exclude '*.safetensors' --exclude '*.bin'" if tokenizer_only else ""
        return f"aws s3 sync{exclude} {src} {q_dest}/"
    if scheme == "gs":
        exclude = " -x '.*\\.(safetensors|bin)$'" if tokenizer_only else ""
        return f"mkdir -p {q_dest} && gsutil -m rsync -r{exclude} {src} {q_dest}/"
    flags = "-xz" if uri.endswith((".tar.gz", ".tgz")) else "-x"  # tar cannot sniff compression on a pipe
    return f"mkdir -p {q_dest} && curl -fsSL {shlex.quote(uri)} | tar {flags} -C {q_dest}"


def fetch_init_containers(spec: ModelServiceSpec, *, tokenizer_only: bool) -> list[dict]:
    """The init container that fetches a `uri` model source; none for volumes."""
    if spec.model is None or spec.model.uri is None:
        return []
    command = fetch_command(spec.model.uri, MODEL_MOUNT_PATH, tokenizer_only=tokenizer_only)
    return [{
        "name": "fetch-model",
        "image": spec.model.fetch_image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["/bin/sh", "-c", f"set -eu; {command}"],
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT_PATH}],
        "env": env_vars(spec),
    }]


def volumes(spec: ModelServiceSpec, *, shm: bool) -> list[dict]:
    vols = [model_volume(spec), {"name": "tenants", "secret": {"secretName": spec.tenants_secret, "optional": True}}]
    vols = [v for v in vols if v is not None]
    if shm:  # NCCL and Ray's object store want a large /dev/shm on GPU nodes
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return vols


def volume_mounts(spec: ModelServiceSpec, *, shm: bool) -> list[dict]:
    mounts = [{"name": "tenants", "mountPath": TENANTS_MOUNT_PATH, "readOnly": True}]
    src = spec.model
    if src is not None:
        read_only = src.uri is None and (src.pvc is None or src.pvc.read_only)
        mounts.insert(0, {"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": read_only})
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def env_vars(spec: ModelServiceSpec) -> list[dict]:
    """User env (e.g. OTEL_*) plus defaults the user did not set, sorted for stable diffs."""
    env = {"OTEL_SERVICE_NAME": "fathom", **spec.env}
    return [{"name": k, "value": v} for k, v in sorted(env.items())]
