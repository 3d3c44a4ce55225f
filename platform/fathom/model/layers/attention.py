"""Multi-head latent attention (MLA, DeepSeek-V2 §2.1) over the paged latent KV cache.

Per token: the query comes from the (optional) low-rank path q_a -> norm -> q_b; the KV latent
c_KV = norm(kv_a(x)[:r]) and the shared rope key k_pe = rope(kv_a(x)[r:]) are written to the
cache. Each query then attends over its sequence's cached context in one of two equal forms:

* expanded (prefill): K_nope, V = kv_b(c_KV) for every context token, ordinary attention;
* absorbed (decode): W_UK is folded into the query and W_UV into the output, so attention runs
  over the latent cache itself: score = (q_nope W_UK)·c_KV + q_pe·k_pe, out = (p·c_KV) W_UV^T.
  Nothing of size context × heads is materialised (DeepSeek-V3 inference/model.py "absorb").

Heads are split over the W ranks (q_b/q_proj and kv_b column-parallel by head, o_proj row-parallel
then all-reduced); q_a and kv_a are replicated, so the cache is the same on every rank.
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import nn

from fathom.model.attention_metadata import AttentionMetadata
from fathom.model.config import DeepseekConfig
from fathom.model.layers.linear import column_parallel, replicated, row_parallel, split_size
from fathom.model.layers.norm import RMSNorm
from fathom.model.layers.rotary import Rotary, softmax_scale
from fathom.parallel.context import ParallelContext

MODES = ("auto", "expand", "absorb")


class MLAttention(nn.Module):
    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        c, w = config, ctx.world_size
        self.n_heads = split_size(c.num_attention_heads, w, "num_attention_heads")
        self.nope, self.rope_dim, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.rank_kv = c.kv_lora_rank
        self.scale = softmax_scale(c)
        self.mode = "auto"
        q_out, heads = c.num_attention_heads * c.qk_dim, "num_attention_heads"
        if c.q_lora_rank is None:
            self.q_proj = column_parallel(c.hidden_size, q_out, ctx, w, heads, dtype)
        else:
            self.q_a_proj = replicated(c.hidden_size, c.q_lora_rank, ctx, dtype)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, c.rms_norm_eps).to(ctx.device, dtype)
            self.q_b_proj = column_parallel(c.q_lora_rank, q_out, ctx, w, heads, dtype)
        self.kv_a_proj_with_mqa = replicated(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, ctx, dtype)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.rms_norm_eps).to(ctx.device, dtype)
        kv_out = c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim)
        self.kv_b_proj = column_parallel(c.kv_lora_rank, kv_out, ctx, w, heads, dtype)
        o_in = c.num_attention_heads * c.v_head_dim
        self.o_proj = row_parallel(o_in, c.hidden_size, ctx, w, heads, reduce=True, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,  # [T, H]
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        rotary: Rotary,
        kv_cache: torch.Tensor,  # [num_blocks, block_size, r + rope]
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        T = x.shape[0]
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(T, self.n_heads, self.nope + self.rope_dim)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        q_pe = rotary.apply(q_pe, *cos_sin)  # [T, h, rope]
        kv = self.kv_a_proj_with_mqa(x)  # [T, r + rope]
        c_kv = self.kv_a_layernorm(kv[:, : self.rank_kv])  # [T, r]
        k_pe = rotary.apply(kv[:, self.rank_kv :], *cos_sin)  # [T, rope]
        flat = kv_cache.view(-1, kv_cache.shape[-1])
        flat[meta.slot_mapping] = torch.cat([c_kv, k_pe], dim=-1).to(flat.dtype)

        out = x.new_empty(T, self.n_heads, self.v_dim)
        block_size = kv_cache.shape[1]
        starts = [0, *accumulate(meta.query_lens)]
        for i, (q_len, s_len) in enumerate(zip(meta.query_lens, meta.seq_lens_list, strict=True)):
            a, b = starts[i], starts[i] + q_len
            n_blocks = -(-s_len // block_size)
            ctx_lat = kv_cache[meta.block_tables[i, :n_blocks]].view(-1, kv_cache.shape[-1])[:s_len]
            ctx_lat = ctx_lat.to(x.dtype)  # [S, r + rope]
            attend = self._absorbed if self._use_absorb(q_len) else self._expanded
            out[a:b] = attend(q_nope[a:b], q_pe[a:b], ctx_lat[:, : self.rank_kv], ctx_lat[:, self.rank_kv :])
        return self.o_proj(out.view(T, -1))

    def _use_absorb(self, q_len: int) -> bool:
        """Absorbed when cheaper: it saves S·r·h·(nope+v) of up-projection but attends over r dims."""
        if self.mode != "auto":
            return self.mode == "absorb"
        r = self.rank_kv
        extra_per_query = 2 * r + self.rope_dim - (self.nope + self.rope_dim) - self.v_dim
        return extra_per_query <= 0 or q_len * extra_per_query < r * (self.nope + self.v_dim)

    def _causal_mask(self, q_len: int, s_len: int, device: torch.device) -> torch.Tensor:
        """Bool [q, S]: query j (position s_len - q_len + j) may see keys at positions <= its own."""
        qpos = torch.arange(s_len - q_len, s_len, device=device)[:, None]
        return torch.arange(s_len, device=device)[None, :] <= qpos

    def _softmax(self, scores: torch.Tensor, q_len: int, s_len: int) -> torch.Tensor:
        """scores [h, q, S] -> probabilities (float32 softmax, causal)."""
        mask = self._causal_mask(q_len, s_len, scores.device)
        scores = scores.float().masked_fill(~mask, float("-inf"))
        return torch.softmax(scores * self.scale, dim=-1)

    def _expanded(self, q_nope, q_pe, c_kv, k_pe) -> torch.Tensor:
        """q_nope [q,h,nope], q_pe [q,h,rope], c_kv [S,r], k_pe [S,rope] -> [q,h,v]."""
        S = c_kv.shape[0]
        kv = self.kv_b_proj(c_kv).view(S, self.n_heads, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)  # [S,h,nope], [S,h,v]
        scores = torch.einsum("qhd,shd->hqs", q_nope, k_nope) + torch.einsum("qhd,sd->hqs", q_pe, k_pe)
        p = self._softmax(scores, q_nope.shape[0], S).to(v.dtype)
        return torch.einsum("hqs,shd->qhd", p, v)

    def _absorbed(self, q_nope, q_pe, c_kv, k_pe) -> torch.Tensor:
        """Same contract as ``_expanded``, attending over the latents without expanding K/V."""
        w = self.kv_b_proj.weight.view(self.n_heads, self.nope + self.v_dim, self.rank_kv)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # [h,nope,r], [h,v,r]
        q_lat = torch.einsum("qhd,hdr->qhr", q_nope, w_uk)  # [q,h,r]
        scores = torch.einsum("qhr,sr->hqs", q_lat, c_kv) + torch.einsum("qhd,sd->hqs", q_pe, k_pe)
        p = self._softmax(scores, q_nope.shape[0], c_kv.shape[0]).to(c_kv.dtype)
        o_lat = torch.einsum("hqs,sr->qhr", p, c_kv)  # [q,h,r]
        return torch.einsum("qhr,hvr->qhv", o_lat, w_uv)
