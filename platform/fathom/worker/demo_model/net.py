"""The training-time DeepSeek-V3 model of the demo checkpoint: plain torch, fp32, full sequences.

The math is transformers' DeepseekV3ForCausalLM (MLA with interleaved rope, noaux_tc sigmoid
routing over expert groups, a shared expert, leading dense layers), and the parameter names are
the Hugging Face checkpoint's, so `state_dict()` is the checkpoint. The multi-token-prediction
module (docs/demo_model.md) is `model.layers.{num_hidden_layers}`:

    h = main model's final hidden state at t, after the final norm;  e = embed(token t+1)
    x = eh_proj(cat([enorm(e), hnorm(h)], -1));  x = decoder_block(x, position t+1)
    logits(token t+2) = shared_head.head(shared_head.norm(x))

Routed experts run on the tokens routed to them (index_select / index_add_, deterministic on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_cos_sin(c: dict, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = c["qk_rope_head_dim"]
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """DeepSeek's interleaved layout: pairs (0,1),(2,3).. are de-interleaved, then rotate-half."""
    *lead, d = x.shape
    x = x.view(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class MLA(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h, self.n = c["hidden_size"], c["num_attention_heads"]
        self.nope, self.rope, self.v, self.kv_rank = (
            c["qk_nope_head_dim"],
            c["qk_rope_head_dim"],
            c["v_head_dim"],
            c["kv_lora_rank"],
        )
        self.q_a_proj = nn.Linear(h, c["q_lora_rank"], bias=False)
        self.q_a_layernorm = RMSNorm(c["q_lora_rank"], c["rms_norm_eps"])
        self.q_b_proj = nn.Linear(c["q_lora_rank"], self.n * (self.nope + self.rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, self.kv_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, c["rms_norm_eps"])
        self.kv_b_proj = nn.Linear(self.kv_rank, self.n * (self.nope + self.v), bias=False)
        self.o_proj = nn.Linear(self.n * self.v, h, bias=False)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(b, s, self.n, -1).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(kv)).view(b, s, self.n, -1).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v], dim=-1)
        q_pe, k_pe = apply_rope(q_pe, cos, sin), apply_rope(k_pe.view(b, 1, s, self.rope), cos, sin)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(b, self.n, s, self.rope)], dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=(self.nope + self.rope) ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, h: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(h, inter, bias=False)
        self.up_proj = nn.Linear(h, inter, bias=False)
        self.down_proj = nn.Linear(inter, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """noaux_tc: sigmoid scores; the bias (not trained by gradient, see update_bias) only chooses."""

    def __init__(self, c: dict):
        super().__init__()
        self.e, self.k = c["n_routed_experts"], c["num_experts_per_tok"]
        self.groups, self.topk_groups = c["n_group"], c["topk_group"]
        self.scale = c["routed_scaling_factor"]
        self.weight = nn.Parameter(torch.empty(self.e, c["hidden_size"]))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.e))

    def forward(self, x):  # x: [T, h] -> (indices [T, k], weights [T, k])
        scores = F.linear(x, self.weight).sigmoid()
        choice = scores.detach() + self.e_score_correction_bias
        group = choice.view(-1, self.groups, self.e // self.groups).topk(2, dim=-1)[0].sum(-1)
        keep = torch.zeros_like(group).scatter_(1, group.topk(self.topk_groups, dim=-1)[1], 1.0)
        keep = keep.repeat_interleave(self.e // self.groups, dim=1).bool()
        idx = choice.masked_fill(~keep, 0.0).topk(self.k, dim=-1)[1]
        w = scores.gather(1, idx)
        return idx, w / (w.sum(-1, keepdim=True) + 1e-20) * self.scale


class MoE(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h, inter = c["hidden_size"], c["moe_intermediate_size"]
        self.gate = Gate(c)
        self.experts = nn.ModuleList(MLP(h, inter) for _ in range(c["n_routed_experts"]))
        self.shared_experts = MLP(h, inter * c["n_shared_experts"])
        self.load = None  # tokens per expert in the last forward (for update_bias)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, w = self.gate(x)
        self.load = torch.bincount(idx.flatten(), minlength=len(self.experts))
        toks, ys = [], []
        for e, expert in enumerate(self.experts):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            toks.append(tok)
            ys.append(expert(x[tok]) * w[tok, slot, None])
        return self.shared_experts(x).index_add(0, torch.cat(toks), torch.cat(ys)).view(shape)

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        """DeepSeek-V3's auxiliary-loss-free balancing: raise the bias of underloaded experts."""
        load = self.load.float()
        self.gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)


class Block(nn.Module):
    def __init__(self, c: dict, moe: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = MLA(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MoE(c) if moe else MLP(c["hidden_size"], c["intermediate_size"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class SharedHead(nn.Module):
    """Its `head` is the main lm_head (shared, as in DeepSeek-V3); the export writes a copy."""

    def __init__(self, c: dict):
        super().__init__()
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class MTPBlock(Block):
    """DeepSeek-V3's multi-token-prediction module, in its checkpoint layout. It shares the main
    model's embedding and output head; the export writes copies of both under its prefix."""

    def __init__(self, c: dict):
        super().__init__(c, moe=True)
        h = c["hidden_size"]
        self.enorm, self.hnorm = RMSNorm(h, c["rms_norm_eps"]), RMSNorm(h, c["rms_norm_eps"])
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.shared_head = SharedHead(c)

    def predict(self, hidden_normed, next_embeds, cos, sin, head: nn.Linear):
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden_normed)], dim=-1))
        x = super().forward(x, cos, sin)
        return head(self.shared_head.norm(x))


class Inner(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        n = c["num_hidden_layers"]
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(
            [Block(c, moe=i >= c["first_k_dense_replace"]) for i in range(n)]
            + [MTPBlock(c) for _ in range(c["num_nextn_predict_layers"])]
        )
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class DemoDeepseekV3(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids [B, S] -> (main logits [B, S, V] for token t+1, MTP logits [B, S-1, V] for token t+2)."""
        n = self.c["num_hidden_layers"]
        s = ids.shape[1]
        cos, sin = rope_cos_sin(self.c, torch.arange(s))
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers[:n]:
            x = layer(x, cos, sin)
        h = self.model.norm(x)
        logits = self.lm_head(h)
        if len(self.model.layers) == n:
            return logits, None
        # MTP at t in [0, S-2]: hidden of t, embedding of t+1, rope positions t+1
        mtp = self.model.layers[n]
        e = self.model.embed_tokens(ids[:, 1:])
        return logits, mtp.predict(h[:, :-1], e, cos[1:], sin[1:], self.lm_head)

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]
