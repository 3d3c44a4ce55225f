"""DeepSeek-V3's multi-token-prediction (MTP) module, used as the draft model of speculative decoding.

A checkpoint with ``num_nextn_predict_layers`` = D stores its MTP modules after the last decoder
layer, under ``model.layers.{L}.`` … ``model.layers.{L + D - 1}.`` (L = ``num_hidden_layers``):
``enorm``, ``hnorm``, ``eh_proj`` [H, 2H], a full decoder block (``input_layernorm``, ``self_attn``,
``post_attention_layernorm``, ``mlp``: MoE when ``is_moe_layer(L)``), ``shared_head.norm``,
``shared_head.head`` and (optionally) its own ``embed_tokens``. Fathom loads the first one.

Entry i of a sequence (DeepSeek-V3 §2.2, vLLM's ``deepseek_mtp``): from h_i, the target's final
hidden state at position i (after the final norm), and token i + 1,

    x = eh_proj(cat([enorm(embed(token_{i+1})), hnorm(h_i)]))
    y = block(x) at rotary position i + 1, attending over entries 0 … i (its own latent cache)
    draft logits for token i + 2 = shared_head.head(shared_head.norm(y)).

Entry i's latent goes to the cache slot of position i in the sequence's blocks, so the target's
block tables serve the MTP's cache as well (one more cache layer). For k > 1 drafts the module is
applied recurrently: entry i + 1 takes y (the block's output, before ``shared_head.norm``) in
place of h_{i+1} and the draft token in place of token i + 2.
"""

from __future__ import annotations

import torch
from torch import nn

from fathom.model.config import DeepseekConfig
from fathom.model.layers.decoder import DecoderLayer
from fathom.model.layers.linear import replicated
from fathom.model.layers.norm import RMSNorm
from fathom.model.layers.vocab import ParallelLMHead, VocabParallelEmbedding
from fathom.parallel.context import ParallelContext


class SharedHead(nn.Module):
    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps).to(ctx.device, dtype)
        self.head = ParallelLMHead(config.vocab_size, config.hidden_size, ctx, dtype)


class MTPLayer(DecoderLayer):
    """The MTP module at index ``num_hidden_layers``: a decoder block (so that its parameter names
    are the checkpoint's) plus the MTP parts (see module doc)."""

    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype, fp8: bool = False,
                 own_embedding: bool = False) -> None:  # fmt: skip
        c = config
        super().__init__(c, ctx, c.num_hidden_layers, dtype, fp8)
        self.enorm = RMSNorm(c.hidden_size, c.rms_norm_eps).to(ctx.device, dtype)
        self.hnorm = RMSNorm(c.hidden_size, c.rms_norm_eps).to(ctx.device, dtype)
        self.eh_proj = replicated(2 * c.hidden_size, c.hidden_size, ctx, dtype)  # not FP8 in DeepSeek-V3
        self.shared_head = SharedHead(c, ctx, dtype)
        if own_embedding:
            self.embed_tokens = VocabParallelEmbedding(c.vocab_size, c.hidden_size, ctx, dtype)

    def combine(self, embeds: torch.Tensor, previous_hidden: torch.Tensor) -> torch.Tensor:
        """[T, H] token embeddings and [T, H] previous hidden states -> the block's input [T, H]."""
        return self.eh_proj(torch.cat([self.enorm(embeds), self.hnorm(previous_hidden)], dim=-1))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output [N, H] -> float32 draft logits [N, vocab], full vocab on every rank."""
        return self.shared_head.head(self.shared_head.norm(hidden))
