"""The paged latent KV cache of multi-head latent attention.

Per layer, one tensor ``[num_blocks, block_size, kv_lora_rank + qk_rope_head_dim]``: for every
cached token the normalised latent c_KV (kv_lora_rank values) followed by its rotated rope key
k_pe. This is all MLA needs to attend (K and V are up-projected from c_KV, or absorbed into the
query and output), so it is identical, and replicated, on every TP rank.
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


def bytes_per_token(config: DeepseekConfig, dtype: torch.dtype) -> int:
    """Cache bytes one token takes on one rank: layers × (kv_lora_rank + rope dims) × itemsize."""
    return config.num_hidden_layers * latent_dim(config) * torch.empty((), dtype=dtype).element_size()


def allocate_kv_caches(
    config: DeepseekConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> list[torch.Tensor]:
    """One zeroed cache tensor per decoder layer."""
    shape = kv_cache_shape(config, num_blocks, block_size)
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
