"""What `fathom serve` checks before it starts Ray, so a bad input fails in a second, in one line,
instead of as a replica that Ray Serve retries and a traceback in a Ray log file:

- the model: a checkpoint directory (config.json, *.safetensors), or a Hugging Face hub id that
  is downloaded here into the standard cache (`huggingface_hub`, with its progress bars;
  `HF_HUB_OFFLINE=1` uses the cache only), then served from the cached snapshot;
- its config.json (the same parser as the model's) and the requested sharding: heads, MLP
  widths and experts must split evenly over the tensor- and expert-parallel sizes;
- `--max-model-len` against the checkpoint's context;
- the shape: TP × replicas rank workers against the CPUs/GPUs a local Ray instance will have
  (counted as Ray counts them; `shape_problem` runs again once Ray is up, and after joining a
  cluster with `--address`);
- the port, and the tenants file.

Imports neither ray nor torch (huggingface_hub only for a hub id).
"""

import os
import re
import socket
from pathlib import Path

from fathom.api.serve import ServeSettings

CPUS_PER_RANK = 1.0  # what each rank worker reserves (fathom.worker.ray_executor.RayExecutor's default)
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*"]  # no pickles, no optimizer states
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PreflightError(Exception):
    """An input that cannot work; `fathom serve` prints it in one line and exits with status 1."""


def preflight(settings: ServeSettings) -> ServeSettings:
    """Check everything that can be checked without Ray; return the settings to deploy (a hub id
    resolved to its local snapshot, the tenants path made absolute)."""
    if settings.address is None and settings.port != 0 and (problem := port_problem(settings.host, settings.port)):
        raise PreflightError(problem)
    settings = _check_tenants(settings)
    settings = resolve_model(settings)
    if settings.engine.model is not None:
        check_checkpoint(Path(settings.engine.model), settings)
    if settings.address is None:
        cpus, gpus = local_resources()
        if problem := shape_problem(settings, cpus, gpus, where="this machine"):
            raise PreflightError(problem)
    return settings


def port_problem(host: str, port: int) -> str | None:
    """Why the API cannot listen on host:port, or None."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        return f"cannot listen on {host}:{port}: {e.strerror} (choose another with --port / --host)"
    return None


def _check_tenants(settings: ServeSettings) -> ServeSettings:
    if settings.tenants is None:
        return settings
    from fathom.tenancy.registry import TenantConfigError, load_registry

    try:
        load_registry(settings.tenants)
    except TenantConfigError as e:
        raise PreflightError(str(e)) from None
    return settings.model_copy(update={"tenants": os.path.abspath(settings.tenants)})


# ---------------------------------------------------------------------------------- the model


def is_hub_id(model: str) -> bool:
    """`org/name` that is not a path on this machine (as `vllm serve` decides)."""
    return not os.path.exists(model) and bool(_HUB_ID.match(model)) and ".." not in model


def resolve_model(settings: ServeSettings) -> ServeSettings:
    """A local directory stays; a hub id becomes its snapshot in the Hugging Face cache (served
    under the hub id unless --served-model-name says otherwise)."""
    model = settings.engine.model
    if model is None:
        return settings
    if not is_hub_id(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise PreflightError(f"model {model}: no such directory (MODEL is a checkpoint directory or a "
                                 "Hugging Face hub id such as deepseek-ai/DeepSeek-V2-Lite)")
        if not path.is_dir():
            raise PreflightError(f"model {model}: not a directory (a checkpoint directory holds config.json, "
                                 "*.safetensors and tokenizer files)")
        engine = settings.engine.model_copy(update={"model": os.path.abspath(path)})  # replicas run elsewhere
        return settings.model_copy(update={"engine": engine})
    snapshot = download(model)
    engine = settings.engine.model_copy(update={"model": snapshot,
                                                "served_model_name": settings.engine.served_model_name or model})
    return settings.model_copy(update={"engine": engine})


def download(repo_id: str) -> str:
    """The local snapshot of `repo_id`: from the Hugging Face cache, downloading what is missing
    (progress bars per file) unless HF_HUB_OFFLINE is set."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        return snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=offline)
    except GatedRepoError:
        raise PreflightError(f"model {repo_id}: gated on the Hugging Face Hub; accept its terms on the model page "
                             "and log in (`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise PreflightError(f"model {repo_id}: no such directory here, and no such model on the Hugging Face Hub "
                             "(or it is private: log in with `hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError as e:
        raise PreflightError(f"model {repo_id}: {_first_line(e)}") from None
    except HFValidationError:
        raise PreflightError(f"model {repo_id}: no such directory (and not a valid Hugging Face hub id)") from None
    except LocalEntryNotFoundError:
        if offline:
            raise PreflightError(f"model {repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                                 f"HF_HUB_OFFLINE=1 forbids downloading it: run `hf download {repo_id}` where there "
                                 "is network, or unset HF_HUB_OFFLINE") from None
        raise PreflightError(f"model {repo_id}: cannot reach the Hugging Face Hub and it is not in the cache "
                             f"({constants.HF_HUB_CACHE})") from None
    except OSError as e:  # network errors, a full disk
        raise PreflightError(f"model {repo_id}: download failed: {_first_line(e)}") from None


def check_checkpoint(path: Path, settings: ServeSettings) -> None:
    """config.json parses as a DeepSeek config, weights are there, and the sharding divides."""
    from fathom.model.config import DeepseekConfig  # pydantic only: no torch

    if not (path / "config.json").is_file():
        raise PreflightError(f"model {path}: no config.json (a checkpoint directory holds config.json, "
                             "*.safetensors and tokenizer files)")
    try:
        config = DeepseekConfig.from_pretrained(path)
    except (ValueError, OSError) as e:
        raise PreflightError(f"model {path}: {_first_line(e)}") from None
    if not (path / "model.safetensors.index.json").is_file() and not any(path.glob("*.safetensors")):
        raise PreflightError(f"model {path}: no *.safetensors weights (pickled .bin checkpoints are never loaded)")
    e = settings.engine
    if problem := sharding_problem(config, e.tensor_parallel_size, e.moe_ep_size, e.world_size, e.eplb.num_redundant_experts):
        raise PreflightError(f"model {path}: {problem}")
    if settings.engine.speculative_config is not None and config.num_nextn_predict_layers < 1:
        raise PreflightError(f"--speculative-config mtp: model {path} has no MTP module "
                             "(config.json num_nextn_predict_layers is 0)")
    limit = config.max_position_embeddings
    if settings.engine.max_model_len is not None and settings.engine.max_model_len > limit:
        raise PreflightError(f"--max-model-len {settings.engine.max_model_len} exceeds the model's context "
                             f"(max_position_embeddings {limit})")


def sharding_problem(config, tp: int, ep: int, world: int | None = None, redundant: int = 0) -> str | None:
    """Why `config` cannot be split over TP ranks (of each attention group) and EP expert groups of
    the `world` ranks (default TP; the splits of `fathom.model.weights.sharding`: heads and
    dense/shared MLP widths over TP, routed experts plus `redundant` replicas over EP, each
    expert's width over world / EP), or None."""
    moe_tp = (world or tp) // ep
    checks = [(config.num_attention_heads, tp, "attention heads", "--tensor-parallel-size")]
    if config.first_k_dense_replace or not config.n_routed_experts:
        checks.append((config.intermediate_size, tp, "dense MLP width (intermediate_size)", "--tensor-parallel-size"))
    if config.n_routed_experts:
        what = "routed experts" + (" + eplb.num_redundant_experts" if redundant else "")
        checks.append((config.n_routed_experts + redundant, ep, what, "--expert-parallel-size"))
        checks.append((config.moe_intermediate_size, moe_tp, "expert width (moe_intermediate_size)",
                       "--tensor-parallel-size / --expert-parallel-size"))
        if config.n_shared_experts:
            checks.append((config.moe_intermediate_size * config.n_shared_experts, tp,
                           "shared-expert width", "--tensor-parallel-size"))
    for size, parts, what, flag in checks:
        if size % parts:
            return f"{flag} {parts} does not divide its {size} {what}; choose a divisor of {size}"
    return None


# ---------------------------------------------------------------------------------- resources


def local_resources() -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray instance started here will have, detected as Ray detects them
    (without importing it: this check must be quick). `fathom.serve.launch.check_cluster`
    checks again against what Ray reports once it runs."""
    return float(_ray_cpu_count()), float(_nvidia_gpu_count())


def _ray_cpu_count() -> float:
    """Ray's count (`ray._private.utils.get_num_cpus`): all CPUs, unless a container's cgroup
    limits them by quota (v1 cfs or v2 cpu.max) or by cpuset (the smaller one then)."""
    count = float(os.cpu_count() or 1)
    if os.environ.get("RAY_USE_MULTIPROCESSING_CPU_COUNT"):
        return count
    quota = None
    try:
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if v1[0].exists() and v1[1].exists():
            quota = float(v1[0].read_text()) / float(v1[1].read_text())
        elif Path("/sys/fs/cgroup/cpu.max").exists():
            q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
            quota = float(q) / float(period) if q.isnumeric() and period.isnumeric() else None
        quota = None if quota is None or quota < 0 else max(quota, 1.0)
        cpuset = Path("/sys/fs/cgroup/cpuset/cpuset.cpus")
        cpus = None
        if cpuset.exists():
            cpus = sum(int(b) - int(a) + 1 if "-" in r else 1
                       for r in cpuset.read_text().strip().split(",") for a, _, b in [r.partition("-")])
    except (OSError, ValueError):
        return count
    limit = min(x for x in (quota, cpus) if x) if (quota or cpus) else None
    return float(int(limit)) if limit else count


def _nvidia_gpu_count() -> int:
    """NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else the driver's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def needs(settings: ServeSettings, gpus: float | None) -> dict[str, float]:
    """Ray resources the app reserves: TP=1 replicas take one GPU each on a GPU cluster (none on
    CPU: the replica's engine runs in its own process outside Ray's accounting); TP>1 replicas
    reserve one bundle per rank worker ({GPU: 1, CPU: 1} or {CPU: 1})."""
    w, r = settings.engine.world_size, settings.num_replicas
    use_gpu = bool(gpus and gpus >= 1)
    if w == 1:
        return {"GPU": float(r)} if use_gpu else {}
    out = {"CPU": w * r * CPUS_PER_RANK}
    if use_gpu:
        out["GPU"] = float(w * r)
    return out


def shape_problem(settings: ServeSettings, cpus: float, gpus: float | None, where: str) -> str | None:
    """Which resource is short for TP × replicas on a cluster of `cpus`/`gpus` (None: fits)."""
    w, r = settings.engine.world_size, settings.num_replicas
    e = settings.engine
    tp = f"--tensor-parallel-size {e.tensor_parallel_size}"
    ranks = f"{tp} × --data-parallel-size {e.data_parallel_size}" if e.data_parallel_size > 1 else tp
    shape = f"{ranks} × --num-replicas {r}" if w > 1 else f"--num-replicas {r}"
    per = "one per rank worker" if w > 1 else "one per replica"
    for resource, have in (("GPU", gpus), ("CPU", cpus)):
        need = needs(settings, gpus).get(resource, 0.0)
        if have is not None and need > have:
            return (f"{shape} needs {need:g} {resource}s ({per}), but Ray has {have:g} on {where}: lower "
                    f"{'--num-replicas or --tensor-parallel-size' if w > 1 else '--num-replicas'}"
                    f"{', or join a larger cluster with --address' if where == 'this machine' else ''}")
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
