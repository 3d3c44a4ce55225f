"""The ModelFits condition: can one rank's GPU hold its share of the model? A pure function of the
spec, by the memory planner's torch-free arithmetic (``fathom.api.memory_plan``, the numbers
`fathom plan` prints), so a ModelService that cannot fit says so in its status instead of
starting pods that die of OOM."""

from fathom.api.memory_plan import GIB, GpuSpec, gpu_spec, plan_memory, quantity_bytes
from fathom.api.model_service import ModelServiceSpec

REASON_FITS, REASON_TOO_BIG = "ModelFits", "InsufficientGpuMemory"


def rank_gpu(spec: ModelServiceSpec) -> GpuSpec | None:
    """The GPU one rank runs on, when the spec says (gpuType and/or gpuMemory; not on CPU ranks)."""
    r = spec.resources
    if r.gpus == 0 or (r.gpu_type is None and r.gpu_memory is None):
        return None
    memory = None if r.gpu_memory is None else quantity_bytes(r.gpu_memory) / GIB
    return gpu_spec(r.gpu_type or f"{r.gpu_memory} GPU", memory)


def model_fits(spec: ModelServiceSpec) -> tuple[bool, str, str] | None:
    """(status, reason, message) of the ModelFits condition, or None when the spec does not give both
    the model's architecture and the GPU."""
    shape = spec.model.architecture if spec.model is not None else None
    gpu = rank_gpu(spec)
    if shape is None or gpu is None:
        return None
    e = spec.engine
    try:
        plan = plan_memory(shape, gpu, num_gpus=e.world_size, tp=e.tensor_parallel_size, dp=e.data_parallel_size,
                           ep=e.moe_ep_size, redundant=e.eplb.num_redundant_experts, dtype="bfloat16" if e.dtype == "auto" else e.dtype,
                           quantization=e.quantization, kv_cache_dtype=e.kv_cache_dtype, max_model_len=e.max_model_len,
                           memory_fraction=e.kv_cache_memory_fraction, block_size=e.block_size,
                           kv_cache_memory=e.kv_cache_memory)  # fmt: skip
    except ValueError as exc:  # a size that does not split over the ranks
        return False, REASON_TOO_BIG, f"the model does not split over the ranks: {exc}"
    worst = max(plan.ranks, key=lambda r: r.weight_bytes)
    numbers = (f"TP {plan.tp}, EP {plan.ep} on {gpu.name} ({gpu.memory_bytes / GIB:.1f} GiB): "
               f"{worst.weight_bytes / GIB:.1f} GiB of {'FP8' if plan.fp8_weights else plan.dtype} weights per rank, "
               f"KV cache {plan.kv_tokens} tokens ({plan.kv_bytes_per_token} bytes each)")  # fmt: skip
    if plan.fits:
        return True, REASON_FITS, numbers
    return False, REASON_TOO_BIG, f"{'; '.join(plan.problems)} ({numbers})"
