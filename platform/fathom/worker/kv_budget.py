"""KV-cache budgeting: the model's dtype, and how many latent-cache blocks a rank can hold.

Every rank sizes its own share from a `CacheSpec` (sent to Ray rank workers as is); the
instance then allocates the minimum over ranks, so that block ids mean the same everywhere."""

import os
from dataclasses import dataclass

import torch

from fathom.api.engine import EngineSettings
from fathom.model.kv_cache import bytes_per_token, kv_dtype


@dataclass(frozen=True)
class CacheSpec:
    """Everything a rank needs to size and allocate its share of the KV cache (picklable)."""

    block_size: int
    kv_cache_memory: int | None
    memory_fraction: float
    max_useful_tokens: int
    kv_cache_dtype: str = "auto"  # 'auto' (the model's dtype) or 'fp8'
    gpu_memory_utilization: float = 0.9

    def dtype_for(self, model) -> torch.dtype:
        """The cache dtype on `model`'s rank."""
        return kv_dtype(self.kv_cache_dtype, model.dtype)


def cache_spec(settings: EngineSettings, max_model_len: int) -> CacheSpec:
    return CacheSpec(settings.block_size, settings.kv_cache_memory, settings.kv_cache_memory_fraction,
                     settings.max_num_seqs * max_model_len, settings.kv_cache_dtype,
                     settings.gpu_memory_utilization)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' = bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def default_device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def blocks_for(model, spec: CacheSpec) -> int:
    """KV blocks that fit this rank's budget once `model` is loaded."""
    per_token = bytes_per_token(model.config, spec.dtype_for(model), model.num_cache_layers)
    return num_kv_blocks(per_token, spec.block_size, model.ctx.device,
                         kv_cache_memory=spec.kv_cache_memory, memory_fraction=spec.memory_fraction,
                         max_useful_tokens=spec.max_useful_tokens,
                         gpu_memory_utilization=spec.gpu_memory_utilization)


def num_kv_blocks(bytes_per_token: int, block_size: int, device: torch.device, *, kv_cache_memory: int | None,
                  memory_fraction: float, max_useful_tokens: int, gpu_memory_utilization: float = 0.9) -> int:
    """Blocks that fit the budget: `kv_cache_memory` bytes; else on CUDA what `gpu_memory_utilization`
    of the GPU leaves once the weights are loaded (`gpu_kv_budget`); else `memory_fraction` of free
    memory capped at `max_useful_tokens` (max_num_seqs × max_model_len on CPU, where
    over-allocating only takes RAM from other processes)."""
    per_block = bytes_per_token * block_size
    if kv_cache_memory is not None:
        budget = kv_cache_memory
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = gpu_kv_budget(free, total, gpu_memory_utilization)
    else:
        budget = min(int(available_memory(device) * memory_fraction), max_useful_tokens * bytes_per_token)
    blocks = budget // per_block
    if blocks < 1:
        raise ValueError(f"KV-cache budget of {budget} bytes holds no block of {block_size} tokens "
                         f"({per_block} bytes); raise kv_cache_memory")
    return blocks


def gpu_kv_budget(free: int, total: int, utilization: float) -> int:
    """vLLM's meaning of gpu_memory_utilization: this instance may use `utilization` of the GPU's
    total memory; whatever is in use now (our weights, other processes) counts against it, and
    the rest is the KV cache's. (Activations fit in the 1 - utilization left over.)"""
    budget = int(total * utilization) - (total - free)
    if budget <= 0:
        gib = 1 << 30
        raise ValueError(f"gpu_memory_utilization {utilization} allows {total * utilization / gib:.1f} GiB of the "
                         f"GPU's {total / gib:.1f} GiB, but {(total - free) / gib:.1f} GiB are already in use "
                         "(weights, other processes): no room for the KV cache; raise it or free the GPU")
    return budget


def available_memory(device: torch.device) -> int:
    """Free bytes on the device (CUDA: mem_get_info; CPU: MemAvailable from /proc/meminfo)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
