"""One decoder block: MLA then a dense MLP or DeepSeekMoE, each with a pre-norm and a residual."""

from __future__ import annotations

import torch
from torch import nn

from fathom.model.config import DeepseekConfig
from fathom.model.layers.attention import MLAttention
from fathom.model.layers.moe import MLP, MoE
from fathom.model.layers.norm import RMSNorm
from fathom.parallel.context import ParallelContext


class DecoderLayer(nn.Module):
    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, idx: int, dtype: torch.dtype,
                 fp8: bool = False) -> None:  # fmt: skip
        super().__init__()
        c = config
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps).to(ctx.device, dtype)
        self.self_attn = MLAttention(c, ctx, dtype, fp8)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps).to(ctx.device, dtype)
        if c.is_moe_layer(idx):
            self.mlp: nn.Module = MoE(c, ctx, dtype, fp8)
        else:
            self.mlp = MLP(c.hidden_size, c.intermediate_size, ctx, ctx.tp_size, "intermediate_size",
                           reduce=True, dtype=dtype, fp8=fp8)  # fmt: skip

    def forward(self, x, cos_sin, rotary, kv_cache, meta) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, rotary, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))
