"""Pod-level pieces of the rendered RayService: quantities, volumes, the model fetcher, env.

Pure functions of a validated `ModelServiceSpec`; no Kubernetes client here.
"""

import json
import shlex
from decimal import Decimal

from fathom.api.model_service import MODEL_MOUNT_PATH, ModelServiceSpec

TENANTS_MOUNT_PATH = "/etc/fathom/tenants"
AUTH_MOUNT_PATH = "/etc/fathom/auth"  # the scrape key's digest (fathom_operator.credentials)
RAY_TOKEN_KEY = "auth_token"  # the Ray token's data key in the auth Secret: KubeRay's RAY_AUTH_TOKEN_SECRET_KEY
METRICS_DIGEST_KEY = "metrics-key.sha256"  # the scrape key's digest in the auth Secret
CACHE_MOUNT_PATH = "/model-cache"  # a worker's model cache (fathom_operator.model_cache)
USAGE_STORE_PASSWORD_ENV = "FATHOM_USAGE_STORE_PASSWORD"  # read by fathom.tenancy.redis_ledger
# rayproject/ray images (and the platform image built on them) run as `ray`: uid 1000, group
# `users` (gid 100), home /home/ray.
RAY_UID, RAY_GID, RAY_HOME = 1000, 100, "/home/ray"
# With a read-only root filesystem these are the places Ray and Fathom write, each an emptyDir:
# /tmp holds Ray's session dir /tmp/ray (logs, sockets, spilled objects, runtime envs) and the
# object store when /dev/shm is small; ~/.cache holds generated test checkpoints ($FATHOM_CACHE
# default), Hugging Face and torch caches.
SCRATCH_DIRS = {"tmp": "/tmp", "cache": f"{RAY_HOME}/.cache"}
TENANTS_FILE = f"{TENANTS_MOUNT_PATH}/tenants.yaml"
METRICS_KEY_FILE = f"{AUTH_MOUNT_PATH}/{METRICS_DIGEST_KEY}"
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
        return None  # the built-in demo model ships in the image
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
    command = fetch_command(spec.model.uri, spec.model.root, tokenizer_only=tokenizer_only)
    return [{
        "name": "fetch-model",
        "image": spec.model.fetch_image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["/bin/sh", "-c", f"set -eu; {command}"],
        # HOME=/tmp: fetch images (aws-cli, cloud-sdk) keep config and state under $HOME, which
        # for uid 1000 may not exist and is read-only anyway.
        "env": env_vars(spec, defaults={"HOME": "/tmp"}),
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT_PATH},
                         {"name": "tmp", "mountPath": SCRATCH_DIRS["tmp"]}],
        "securityContext": container_security_context(),
    }]


def pod_security_context() -> dict:
    """Ray pods run as the image's unprivileged user under the runtime's default seccomp profile.

    `fsGroup` makes a model PVC readable by that user; `OnRootMismatch` skips the recursive
    chown of a volume already owned by it (a multi-hundred-GB checkpoint would stall each start).
    """
    return {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_GID, "fsGroup": RAY_GID,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict:
    """Every container of a Ray pod: no privilege escalation, no capabilities, read-only root.

    KubeRay copies the Ray container's context onto the `wait-gcs-ready` init container it injects.
    """
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def volumes(spec: ModelServiceSpec, auth_secret: str, *, shm: bool, cache: dict | None = None) -> list[dict]:
    """The pod's volumes; `cache`: the model cache volume of a worker pod (fathom_operator.model_cache);
    of the auth Secret only the scrape key's digest (the Ray token reaches Ray as RAY_AUTH_TOKEN)."""
    auth = {"name": "auth", "secret": {"secretName": auth_secret,
                                       "items": [{"key": METRICS_DIGEST_KEY, "path": METRICS_DIGEST_KEY}]}}
    vols = [model_volume(spec), cache, {"name": "tenants", "secret": {"secretName": spec.tenants_secret, "optional": True}},
            auth]
    vols = [v for v in vols if v is not None] + [{"name": n, "emptyDir": {}} for n in SCRATCH_DIRS]
    if shm:  # NCCL and Ray's object store want a large /dev/shm on GPU nodes
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return vols


def volume_mounts(spec: ModelServiceSpec, *, shm: bool, cache: dict | None = None) -> list[dict]:
    mounts = [{"name": "tenants", "mountPath": TENANTS_MOUNT_PATH, "readOnly": True},
              {"name": "auth", "mountPath": AUTH_MOUNT_PATH, "readOnly": True}]
    src = spec.model
    if src is not None:
        read_only = src.uri is None and (src.pvc is None or src.pvc.read_only)
        mounts.insert(0, {"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": read_only})
    if cache is not None:
        mounts.insert(1, {"name": cache["name"], "mountPath": CACHE_MOUNT_PATH, "readOnly": True})
    mounts += scratch_mounts()
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def scratch_mounts() -> list[dict]:
    """The writable emptyDirs (SCRATCH_DIRS) of a container with a read-only root."""
    return [{"name": n, "mountPath": path} for n, path in SCRATCH_DIRS.items()]


def env_vars(spec: ModelServiceSpec, defaults: dict[str, str] | None = None, *,
             ray_auth_secret: str | None = None) -> list[dict]:
    """User env (e.g. OTEL_*) plus defaults the user did not set, sorted for stable diffs; the
    usage store's password from its Secret (never a value in the RayService); for a Ray
    container (`ray_auth_secret`), Ray's token auth: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from
    the auth Secret, set here rather than left to KubeRay's injection so that every Ray process
    of the pod runs with them whatever KubeRay version applies the RayService (spec.env may not
    name them: ModelServiceSpec refuses it)."""
    env = {"OTEL_SERVICE_NAME": "fathom", **(defaults or {}), **spec.env}
    if ray_auth_secret is not None:
        env["RAY_AUTH_MODE"] = "token"
    out = [{"name": k, "value": v} for k, v in sorted(env.items())]
    if ray_auth_secret is not None:
        out.append({"name": "RAY_AUTH_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": ray_auth_secret, "key": RAY_TOKEN_KEY}}})
    ft = spec.fault_tolerance
    if ft is not None and ft.usage_ledger and ft.redis_password_secret is not None:
        ref = ft.redis_password_secret
        out.append({"name": USAGE_STORE_PASSWORD_ENV,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return out


def drain_seconds(spec: ModelServiceSpec) -> int:
    """How long the preStop hook drains: the grace period less 10 s for Ray to stop."""
    return spec.termination_grace_period_seconds - 10


def lifecycle(spec: ModelServiceSpec, role: str) -> dict:
    """The preStop hook of a Ray container (`fathom.serve.prestop`): `head` or `worker`."""
    command = ["python", "-m", "fathom.serve.prestop", role, "--timeout", str(drain_seconds(spec))]
    return {"preStop": {"exec": {"command": command}}}
