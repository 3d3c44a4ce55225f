"""Multi-head latent attention (MLA, DeepSeek-V2 §2.1) over the paged latent KV cache.

Per token: the query comes from the (optional) low-rank path q_a -> norm -> q_b; the KV latent
c_KV = norm(kv_a(x)[:r]) and the shared rope key k_pe = rope(kv_a(x)[r:]) are written to the
cache. Each query then attends over its sequence's cached context in one of two equal forms:

* expanded (prefill): K_nope, V = kv_b(c_KV) for every context token, ordinary attention;
* absorbed (decode): W_UK is folded into the query and W_UV into the output, so attention runs
  over the latent cache itself: score = (q_nope W_UK)·c_KV + q_pe·k_pe, out = (p·c_KV) W_UV^T.
  Nothing of size context × heads is materialised (DeepSeek-V3 inference/model.py "absorb").

Sequences attend one at a time, except that at decode (q_i = 1, or a few queries verifying
speculative drafts; absorbed) every such query of the step attends in one batch: their contexts are
gathered through their block tables padded to the longest and masked past each query's position
(``AttentionMetadata.decode_batch``), so a decode step is a few batched GEMMs per layer instead of
B small ones (``batch_decode = False`` turns this off).

Heads are split over the W ranks (q_b/q_proj and kv_b column-parallel by head, o_proj row-parallel
then all-reduced); q_a and kv_a are replicated, so the cache is the same on every rank.
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import nn

from fathom.model.attention_metadata import AttentionMetadata, DecodeBatch
from fathom.model.config import DeepseekConfig
from fathom.model.kv_cache import read_latents, write_latents
from fathom.model.layers.linear import column_parallel, replicated, row_parallel, split_size
from fathom.model.layers.norm import RMSNorm
from fathom.model.layers.rotary import Rotary, softmax_scale
from fathom.parallel.context import ParallelContext

MODES = ("auto", "expand", "absorb")


class MLAttention(nn.Module):
    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype, fp8: bool = False) -> None:
        super().__init__()
        c, w = config, ctx.tp_size
        self.n_heads = split_size(c.num_attention_heads, w, "num_attention_heads")
        self.nope, self.rope_dim, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.rank_kv = c.kv_lora_rank
        self.scale = softmax_scale(c)
        self.mode = "auto"
        self.batch_decode = True  # attend all q_i = 1 sequences of a step in one batch (absorbed)
        self.kv_scale = 1.0  # an FP8 cache holds latent / kv_scale (fathom.model.kv_cache)
        q_out, heads = c.num_attention_heads * c.qk_dim, "num_attention_heads"
        if c.q_lora_rank is None:
            self.q_proj = column_parallel(c.hidden_size, q_out, ctx, w, heads, dtype, fp8)
        else:
            self.q_a_proj = replicated(c.hidden_size, c.q_lora_rank, ctx, dtype, fp8)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, c.rms_norm_eps).to(ctx.device, dtype)
            self.q_b_proj = column_parallel(c.q_lora_rank, q_out, ctx, w, heads, dtype, fp8)
        self.kv_a_proj_with_mqa = replicated(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, ctx, dtype, fp8)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.rms_norm_eps).to(ctx.device, dtype)
        kv_out = c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim)
        self.kv_b_proj = column_parallel(c.kv_lora_rank, kv_out, ctx, w, heads, dtype, fp8)
        o_in = c.num_attention_heads * c.v_head_dim
        self.o_proj = row_parallel(o_in, c.hidden_size, ctx, w, heads, reduce=True, dtype=dtype, fp8=fp8)

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
        write_latents(kv_cache, meta.slot_mapping, torch.cat([c_kv, k_pe], dim=-1), self.kv_scale)

        dec = meta.decode_batch(kv_cache.shape[1]) if self.batch_decode and self._use_absorb(1) else None
        if dec is not None and dec.every_row:  # pure decode step: one attention for the whole batch
            return self.o_proj(self._decode_batched(q_nope, q_pe, kv_cache, dec).reshape(T, -1))
        out = x.new_empty(T, self.n_heads, self.v_dim)
        if dec is not None:
            out[dec.rows] = self._decode_batched(q_nope[dec.rows], q_pe[dec.rows], kv_cache, dec)
        self._attend_per_sequence(out, q_nope, q_pe, kv_cache, meta, skip=set(dec.seqs) if dec else set())
        return self.o_proj(out.view(T, -1))

    def _attend_per_sequence(self, out, q_nope, q_pe, kv_cache, meta, skip: set[int]) -> None:
        """out[rows of seq i] = attention of seq i's queries over its cached context, one at a time
        (but for the sequences in ``skip``, batched already)."""
        block_size = kv_cache.shape[1]
        starts = [0, *accumulate(meta.query_lens)]
        for i, (q_len, s_len) in enumerate(zip(meta.query_lens, meta.seq_lens_list, strict=True)):
            if i in skip:
                continue
            a, b = starts[i], starts[i] + q_len
            n_blocks = -(-s_len // block_size)
            ctx_lat = kv_cache[meta.block_tables[i, :n_blocks]].view(-1, kv_cache.shape[-1])[:s_len]
            ctx_lat = read_latents(ctx_lat, out.dtype, self.kv_scale)  # [S, r + rope]
            attend = self._absorbed if self._use_absorb(q_len) else self._expanded
            out[a:b] = attend(q_nope[a:b], q_pe[a:b], ctx_lat[:, : self.rank_kv], ctx_lat[:, self.rank_kv :])

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
        w = self.kv_b_proj.dense_weight().view(self.n_heads, self.nope + self.v_dim, self.rank_kv)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # [h,nope,r], [h,v,r]
        q_lat = torch.einsum("qhd,hdr->qhr", q_nope, w_uk)  # [q,h,r]
        scores = torch.einsum("qhr,sr->hqs", q_lat, c_kv) + torch.einsum("qhd,sd->hqs", q_pe, k_pe)
        p = self._softmax(scores, q_nope.shape[0], c_kv.shape[0]).to(c_kv.dtype)
        o_lat = torch.einsum("hqs,sr->qhr", p, c_kv)  # [q,h,r]
        return torch.einsum("qhr,hvr->qhv", o_lat, w_uv)

    def _decode_batched(self, q_nope, q_pe, kv_cache, dec: DecodeBatch) -> torch.Tensor:
        """Absorbed attention of B sequences' single queries at once, each over its own context
        (padded to the longest, masked past seq_len): q_nope [B,h,nope], q_pe [B,h,rope] -> [B,h,v]."""
        B = q_nope.shape[0]
        ctx = kv_cache.index_select(0, dec.block_tables).view(B, dec.valid.shape[1], -1)  # [B,S,r+rope]
        ctx = read_latents(ctx, q_nope.dtype, self.kv_scale)
        w = self.kv_b_proj.dense_weight().view(self.n_heads, self.nope + self.v_dim, self.rank_kv)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # [h,nope,r], [h,v,r]
        q_lat = torch.einsum("bhd,hdr->bhr", q_nope, w_uk)  # [B,h,r]
        scores = torch.bmm(torch.cat([q_lat, q_pe], dim=-1), ctx.transpose(1, 2))  # [B,h,S]
        scores = torch.where(dec.valid[:, None, :], scores.float(), float("-inf"))
        p = torch.softmax(scores * self.scale, dim=-1).to(ctx.dtype)  # [B,h,S]
        o_lat = torch.bmm(p, ctx)[..., : self.rank_kv]  # [B,h,r]
        return torch.einsum("bhr,hvr->bhv", o_lat, w_uv)
