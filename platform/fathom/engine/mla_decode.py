"""Batched decode attention over the paged latent cache (an engine-side attention backend).

The model's MLA (`fathom.model.layers.attention.MLAttention`) attends one sequence at a time;
at decode (q_i = 1) that is B small kernels per layer plus Python overhead, which dominates a
step on CPU. This backend keeps the model's own projections, rope and cache write, and runs
every decoding sequence of the batch in one weight-absorbed attention over the latent cache:

    q_lat  = q_nope · W_UK                        [B, h, r]
    scores = q_lat · c_KV^T + q_pe · k_pe^T       [B, h, S_max]  (masked past seq_len)
    out    = softmax(scores · scale) · c_KV · W_UV^T   [B, h, v]

gathering each sequence's context through its block table padded to the longest one.
Prefill chunks (q_i > 1) still go through the model's per-sequence path. `install(model)`
swaps the backend in per layer; it is a no-op if the model's attention is not the MLA layer
this was written against (so the model can evolve without breaking the engine)."""

import types
from dataclasses import dataclass
from itertools import accumulate

import torch

_NEEDED = ("n_heads", "nope", "rope_dim", "v_dim", "rank_kv", "scale", "kv_a_proj_with_mqa",
           "kv_a_layernorm", "kv_b_proj", "o_proj", "_use_absorb", "_absorbed", "_expanded")


def install(model) -> bool:
    """Use batched decode in every MLA layer of `model`; False (nothing changed) if unsupported."""
    layers = [getattr(layer, "self_attn", None) for layer in getattr(getattr(model, "model", None), "layers", [])]
    if not layers or not all(a is not None and all(hasattr(a, n) for n in _NEEDED) for a in layers):
        return False
    for attn in layers:
        attn.forward = types.MethodType(forward, attn)
    return True


def forward(self, x, cos_sin, rotary, kv_cache, meta):
    """MLAttention.forward with decodes batched. x [T, H] -> [T, H]."""
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
    k_pe = rotary.apply(kv[:, self.rank_kv:], *cos_sin)  # [T, rope]
    flat = kv_cache.view(-1, kv_cache.shape[-1])
    flat[meta.slot_mapping] = torch.cat([c_kv, k_pe], dim=-1).to(flat.dtype)

    plan = _plan(meta, kv_cache.shape[1], x.device)
    if not plan.prefills:  # a pure decode step: every row is one sequence's only new token
        return self.o_proj(_decode(self, q_nope, q_pe, kv_cache, plan).to(x.dtype).reshape(T, -1))
    out = x.new_empty(T, self.n_heads, self.v_dim)
    if plan.rows is not None:
        out[plan.rows] = _decode(self, q_nope[plan.rows], q_pe[plan.rows], kv_cache, plan).to(out.dtype)
    block_size = kv_cache.shape[1]
    for i, a, q_len, s_len in plan.prefills:
        b = a + q_len
        blocks = meta.block_tables[i, : -(-s_len // block_size)]
        ctx = kv_cache.index_select(0, blocks).view(-1, kv_cache.shape[-1])[:s_len]
        ctx = ctx.to(x.dtype)
        attend = self._absorbed if self._use_absorb(q_len) else self._expanded
        out[a:b] = attend(q_nope[a:b], q_pe[a:b], ctx[:, : self.rank_kv], ctx[:, self.rank_kv:])
    return self.o_proj(out.view(T, -1))


@dataclass
class _Plan:
    """Per-step layout shared by every layer: which rows decode, their context blocks and mask."""

    meta: object
    rows: torch.Tensor | None  # Long[B_dec] batch rows of the decoding sequences
    tables: torch.Tensor | None  # Long[B_dec * n_blocks] their block tables, cut to the longest, flat
    valid: torch.Tensor | None  # Bool[B_dec, n_blocks * block_size] context positions < seq_len
    prefills: list[tuple[int, int, int, int]]  # (seq index, first row, q_len, seq_len) of q_len > 1


_last_plan: list[_Plan] = []


def _plan(meta, block_size: int, device) -> _Plan:
    cached = _last_plan[0] if _last_plan else None  # one read: other engines' threads may swap it
    if cached is not None and cached.meta is meta:
        return cached
    starts = [0, *accumulate(meta.query_lens)]
    decodes = [i for i, q in enumerate(meta.query_lens) if q == 1]
    prefills = [(i, starts[i], q, meta.seq_lens_list[i]) for i, q in enumerate(meta.query_lens) if q > 1]
    rows = tables = valid = None
    if decodes:
        lens = torch.tensor([meta.seq_lens_list[i] for i in decodes], device=device)
        n_blocks = -(-int(lens.max()) // block_size)
        rows = torch.tensor([starts[i] for i in decodes], device=device)
        tables = meta.block_tables[torch.tensor(decodes, device=device), :n_blocks].reshape(-1)
        valid = torch.arange(n_blocks * block_size, device=device)[None, :] < lens[:, None]
    plan = _Plan(meta, rows, tables, valid, prefills)
    _last_plan[:] = [plan]
    return plan


def _decode(self, q_nope, q_pe, kv_cache, plan: _Plan) -> torch.Tensor:
    """q_nope [B,h,nope], q_pe [B,h,rope] of B decoding sequences -> [B,h,v]."""
    B = q_nope.shape[0]
    ctx = kv_cache.index_select(0, plan.tables).view(B, plan.valid.shape[1], -1).to(q_nope.dtype)  # [B,S,r+rope]
    w = self.kv_b_proj.weight.view(self.n_heads, self.nope + self.v_dim, self.rank_kv)
    w_uk, w_uv = w[:, : self.nope], w[:, self.nope:]  # [h,nope,r], [h,v,r]
    q_lat = torch.einsum("bhd,hdr->bhr", q_nope, w_uk)  # [B,h,r]
    scores = torch.bmm(torch.cat([q_lat, q_pe], dim=-1), ctx.transpose(1, 2))  # [B,h,S]
    scores = torch.where(plan.valid[:, None, :], scores.float(), float("-inf"))
    p = torch.softmax(scores * self.scale, dim=-1).to(ctx.dtype)  # [B,h,S]
    o_lat = torch.bmm(p, ctx)[..., : self.rank_kv]  # [B,h,r]
    return torch.einsum("bhr,hvr->bhv", o_lat, w_uv)
