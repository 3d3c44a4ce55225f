"""MLA decode: absorbed (attend over the latent cache) vs expanded (up-project K/V every step).

Runs one attention layer with DeepSeek-V3's per-head dims (kv_lora_rank 512, rope 64, nope 128,
v 128; fewer heads and a smaller hidden size so it runs on a laptop CPU) for a decode step
(q = 1 per sequence) at several context lengths, both forms side by side in one process, and
prints the time ratio. Usage: PYTHONPATH=platform python benchmarks/bench_mla_decode.py
"""

from __future__ import annotations

import time

import torch

from fathom.model.attention_metadata import AttentionMetadata, contiguous_layout
from fathom.model.config import DeepseekConfig
from fathom.model.kv_cache import allocate_kv_caches
from fathom.model.layers.attention import MLAttention
from fathom.model.layers.rotary import Rotary
from fathom.parallel.context import ParallelContext

CONFIG = {
    "model_type": "deepseek_v3", "vocab_size": 1024, "hidden_size": 1024, "intermediate_size": 2048,
    "num_hidden_layers": 1, "num_attention_heads": 16, "q_lora_rank": 384, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
}  # fmt: skip


def time_step(attn: MLAttention, mode: str, x, cos_sin, rotary, cache, meta, reps: int) -> float:
    attn.mode = mode
    attn(x, cos_sin, rotary, cache, meta)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        attn(x, cos_sin, rotary, cache, meta)
    return (time.perf_counter() - t0) / reps


@torch.inference_mode()
def main() -> None:
    torch.manual_seed(0)
    config = DeepseekConfig.from_dict(CONFIG)
    attn = MLAttention(config, ParallelContext.single(), torch.float32)
    for p in attn.parameters():
        p.normal_(0, p.shape[-1] ** -0.5)
    rotary, batch, block = Rotary(config), 4, 64
    print(f"{'context':>8} {'expanded ms':>12} {'absorbed ms':>12} {'expanded/absorbed':>18}")
    for ctx_len in (256, 1024, 4096):
        tables, n_blocks = contiguous_layout([ctx_len] * batch, block)
        (cache,) = allocate_kv_caches(config, n_blocks, block)
        cache.normal_()
        meta = AttentionMetadata.build([1] * batch, [ctx_len] * batch, tables, block)
        x = torch.randn(batch, config.hidden_size)
        cos_sin = rotary.cos_sin(meta.positions())
        reps = max(3, 20000 // ctx_len)
        exp = time_step(attn, "expand", x, cos_sin, rotary, cache, meta, reps)
        absb = time_step(attn, "absorb", x, cos_sin, rotary, cache, meta, reps)
        print(f"{ctx_len:>8} {exp * 1e3:>12.2f} {absb * 1e3:>12.2f} {exp / absb:>18.2f}")


if __name__ == "__main__":
    main()
