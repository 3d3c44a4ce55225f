"""How the engine runs the model: the `Executor` protocol and the in-process executor (W=1).

The Ray rank-worker executor for W>1 lives in `fathom.parallel.executor` and speaks the same
protocol, so the engine never knows which one it drives."""

import os
from typing import Protocol

import torch

from fathom.engine.errors import EngineDeadError
from fathom.engine.step_input import StepInput, StepOutput
from fathom.telemetry.spans import forward_step_span


class Executor(Protocol):
    num_kv_blocks: int  # KV-cache blocks available on every rank (the minimum over ranks)
    vocab_size: int

    def execute(self, step: StepInput) -> StepOutput:
        """Run one step on every rank; rank 0's sampled tokens. Raises EngineDeadError if a rank died."""

    def check_health(self) -> None:
        """Raise EngineDeadError when the executor can no longer run steps."""

    def shutdown(self) -> None: ...


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' = bfloat16 on CUDA, float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


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


class InProcessExecutor:
    """W=1: the model and its KV cache live in this process."""

    def __init__(self, runner):
        self.runner = runner
        self.num_kv_blocks = runner.num_blocks
        self.vocab_size = runner.model.config.vocab_size
        self._dead: BaseException | None = None

    def execute(self, step: StepInput) -> StepOutput:
        if self._dead is not None:
            raise EngineDeadError(f"the model executor failed earlier: {self._dead!r}")
        try:
            with forward_step_span(step.trace_contexts, rank=0, world_size=1, num_tokens=len(step.token_ids)):
                return self.runner.execute(step)
        except Exception as e:  # a failed forward leaves the KV cache in an unknown state
            self._dead = e
            raise EngineDeadError(f"model forward failed: {e!r}") from e

    def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the model executor failed earlier: {self._dead!r}")

    def shutdown(self) -> None:
        self.runner = None
