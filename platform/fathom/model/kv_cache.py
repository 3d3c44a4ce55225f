"""The paged latent KV cache of multi-head latent attention.

Per layer, one tensor ``[num_blocks, block_size, kv_lora_rank + qk_rope_head_dim]``: for every
cached token the normalised latent c_KV (kv_lora_rank values) followed by its rotated rope key
k_pe. This is all MLA needs to attend (K and V are up-projected from c_KV, or absorbed into the
query and output), so it is identical, and replicated, on every TP rank.

The cache is in the model's dtype, or float8_e4m3fn (``--kv-cache-dtype fp8``: half the bytes of
bf16 per token) holding latent / ``scale`` (a per-layer float, 1.0 unless calibrated), saturated
at ±448, and read back as stored × ``scale``.
"""

from __future__ import annotations

import torch

from fathom.model.config import DeepseekConfig


def latent_dim(config: DeepseekConfig) -> int:
    """Values cached per token per layer: kv_lora_rank + qk_rope_head_dim."""
    return config.kv_lora_rank + config.qk_rope_head_dim


def kv_cache_shape(config: DeepseekConfig, num_blocks: int, block_size: int) -> tuple[int, int, int]:
    """Shape of one layer's cache tensor."""
    return (num_blocks, block_size, latent_dim(config))


FP8 = torch.float8_e4m3fn


def kv_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache dtype for ``--kv-cache-dtype``: 'auto' = the model's dtype, 'fp8' = float8_e4m3fn."""
    if name == "auto":
        return model_dtype
    if name in ("fp8", "fp8_e4m3"):
        return FP8
    raise ValueError(f"kv cache dtype must be 'auto' or 'fp8', got {name!r}")


def write_latents(kv_cache: torch.Tensor, slots: torch.Tensor, latents: torch.Tensor, scale: float = 1.0) -> None:
    """Store latents [T, r + rope] at flat ``slots`` Long[T] of one layer's cache (scaled for FP8)."""
    flat = kv_cache.view(-1, kv_cache.shape[-1])
    if flat.dtype == FP8:
        fmax = torch.finfo(FP8).max
        latents = (latents.float() / scale).clamp(-fmax, fmax)
    flat[slots] = latents.to(flat.dtype)


def read_latents(cached: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Cached latents (any shape) in the compute ``dtype`` (FP8: times ``scale``)."""
    out = cached.to(dtype)
    return out * scale if cached.dtype == FP8 and scale != 1.0 else out


def bytes_per_token(config: DeepseekConfig, dtype: torch.dtype, layers: int | None = None) -> int:
    """Cache bytes one token takes on one rank: layers × (kv_lora_rank + rope dims) × itemsize
    (``layers`` defaults to the decoder layers; a model with its MTP module caches one more)."""
    layers = config.num_hidden_layers if layers is None else layers
    return layers * latent_dim(config) * torch.empty((), dtype=dtype).element_size()


def allocate_kv_caches(
    config: DeepseekConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    layers: int | None = None,
) -> list[torch.Tensor]:
    """One zeroed cache tensor per decoder layer (``layers``: per cache layer of the model,
    ``DeepseekForCausalLM.num_cache_layers``, when it has an MTP module)."""
    shape = kv_cache_shape(config, num_blocks, block_size)
    n = config.num_hidden_layers if layers is None else layers
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)]
