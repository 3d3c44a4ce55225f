"""DeepSeekMoE (DeepSeek-V2 §2.2, V3 §2.1.2): a gate, routed experts and shared experts.

Routing (``Gate``), per token, over E routed experts in ``n_group`` groups:

* scores: softmax (V2) or sigmoid (V3) of x·W_gate^T, in float32;
* greedy: top-k scores;
* group_limited_greedy (V2): keep the ``topk_group`` groups with the highest max score;
* noaux_tc (V3): choose with score + e_score_correction_bias, groups ranked by the sum of their
  top-2 biased scores; weights are the unbiased scores of the chosen experts;
* weights: sigmoid -> renormalised if ``norm_topk_prob``, then × ``routed_scaling_factor``;
  softmax -> renormalised if ``norm_topk_prob`` and top-k > 1, else × ``routed_scaling_factor``
  (as DeepSeek's own V2 and V3 code do).

Parallelism: a rank holds the gate, its slice of the shared experts (split over the TP ranks of
its attention group) and expert shard ``ctx.ep_rank``: the physical expert slots
``ctx.local_experts`` (``expert_placement``: which logical expert each slot holds, redundant
replicas included), each expert's intermediate dim split over the W/EP ranks sharing the shard.
The group's batch is replicated over its TP ranks; each handles its ``token_share`` of it. Two
ways to combine (``ctx.moe_a2a``), the same sum:

* all-reduce (D = 1): every rank routes the whole batch and computes the partial output of the
  tokens routed to its experts; one all-reduce over the W ranks adds the routed and shared
  partial sums (dispatch is the identity: attention already replicated the tokens);
* all-to-all (EP = W, needed for data-parallel attention): a rank routes only its share and
  ``moe_dispatch.AllToAllDispatcher`` sends each (token, choice) to its slot's owner and back;
  the shared experts' partial sums and the shares are then added by one all-reduce within the
  group (none when TP = 1). See docs/sharding.md.

A rank's routed experts live only as two stacked parameters (``RoutedExperts``: ``w13``, ``w2``,
the gpt-fast / vLLM FusedMoE layout), run in one of two equal ways:

* grouped: the (token, choice) pairs sorted by expert, each local expert's SwiGLU on its run of
  them as two ``F.grouped_mm`` calls over the stacks (no loop, no weight copy; expert by expert
  where torch has no grouped GEMM for the device or dtype). Work: T·k expert-tokens;
* dense: every local expert on every token as two batched GEMMs, weighted by the combine weights
  (zero where not routed): E/k times the work in a handful of ops. It wins only where experts
  are so small that a grouped GEMM's per-expert overhead outweighs that waste (see ``DENSE_WASTE``).
"""

from __future__ import annotations

from itertools import accumulate, pairwise

import torch
import torch.nn.functional as F
from torch import nn

from fathom.model.config import DeepseekConfig
from fathom.model.layers.expert_placement import ExpertPlacement
from fathom.model.layers.fp8_gemm import Scratch, block_scaled_mm_runs, dequantized, fp8_linear
from fathom.model.layers.linear import column_parallel, row_parallel, split_size
from fathom.model.layers.moe_dispatch import AllToAllDispatcher, token_share
from fathom.model.weights import fp8 as fp8_format
from fathom.parallel.comm import all_reduce
from fathom.parallel.context import ParallelContext

DENSE_LIMIT = 2048  # T × local experts up to which dense may run (bounds its [T, E_local, 2I] activations)
# Multiply-adds dense spends per routed (token, expert) pair, (E / k) · 3 · I_r · H, up to which it is
# faster than grouped: benchmarks/moe_paths.py, CPU, float32, one thread (tiny experts only; DeepSeek
# V2-Lite is at ~90M, V3 at ~1400M).
DENSE_WASTE = 150_000


class MLP(nn.Module):
    """SwiGLU MLP, intermediate dim split in ``parts``: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, inter: int, ctx: ParallelContext, parts: int, what: str,
                 *, reduce: bool, dtype: torch.dtype, fp8: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.gate_proj = column_parallel(hidden, inter, ctx, parts, what, dtype, fp8)
        self.up_proj = column_parallel(hidden, inter, ctx, parts, what, dtype, fp8)
        self.down_proj = row_parallel(inter, hidden, ctx, parts, what, reduce=reduce, dtype=dtype, fp8=fp8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Routes tokens: x [T, H] -> (weights float32 [T, k], expert ids Long[T, k])."""

    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        c = config
        self.top_k, self.n_experts = c.num_experts_per_tok, c.n_routed_experts
        self.n_group, self.topk_group = c.num_groups, c.topk_groups
        self.method, self.scoring = c.routing_method, c.gate_scoring
        self.norm_topk_prob, self.scaling = c.norm_topk_prob, c.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(c.n_routed_experts, c.hidden_size, dtype=dtype,
                                               device=ctx.device), requires_grad=False)  # fmt: skip
        if self.method == "noaux_tc":
            bias = torch.zeros(c.n_routed_experts, dtype=torch.float32, device=ctx.device)
            self.e_score_correction_bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float())  # [T, E]
        scores = logits.sigmoid() if self.scoring == "sigmoid" else logits.softmax(dim=-1)
        if self.method == "greedy":
            ids = scores.topk(self.top_k, dim=-1, sorted=False)[1]
        elif self.method == "group_limited_greedy":
            group_score = scores.view(-1, self.n_group, self.n_experts // self.n_group).amax(dim=-1)
            ids = self._topk_in_groups(scores, group_score, fill=0.0)
        else:  # noaux_tc
            biased = scores + self.e_score_correction_bias.float()
            grouped = biased.view(-1, self.n_group, self.n_experts // self.n_group)
            group_score = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            ids = self._topk_in_groups(biased, group_score, fill=float("-inf"))
        weights = scores.gather(1, ids)  # [T, k]
        if self.scoring == "sigmoid":
            if self.norm_topk_prob:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
            weights = weights * self.scaling
        elif self.norm_topk_prob and self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        else:
            weights = weights * self.scaling
        return weights, ids

    def _topk_in_groups(self, choice: torch.Tensor, group_score: torch.Tensor, fill: float) -> torch.Tensor:
        """Top-k of ``choice`` [T, E] among the ``topk_group`` best groups by ``group_score`` [T, G]."""
        group_idx = group_score.topk(self.topk_group, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, group_idx, True)
        keep = keep.unsqueeze(-1).expand(-1, -1, self.n_experts // self.n_group).reshape(-1, self.n_experts)
        return choice.masked_fill(~keep, fill).topk(self.top_k, dim=-1, sorted=False)[1]


class RoutedExperts(nn.Module):
    """This rank's routed experts, stacked in physical slot order (local index j = slot -
    ``local.start``; with no redundant experts, slot = expert id), each
    holding its 1/moe_tp_size part of the intermediate dim (I_r = moe_intermediate_size / moe_tp_size):

    * ``w13`` [E_local, 2·I_r, H]: expert j's gate_proj rows, then its up_proj rows;
    * ``w2`` [E_local, H, I_r]: its down_proj.

    With ``fp8`` both are float8_e4m3fn with float32 block scales ``w13_scale_inv`` / ``w2_scale_inv``
    [E_local, blocks of rows, blocks of cols] (blocks ``w13_block`` / ``w2_block``, fathom.model.weights.fp8;
    w13's rows in gcd(128, I_r) so no block straddles gate and up). They are multiplied expert by
    expert on the block-scaled kernel where it runs, else the experts that have tokens are
    dequantised just in time into the shared scratch buffer and run grouped as below.

    forward(x [T, H], weights float32 [T, k], ids Long[T, k] physical slots) -> this rank's partial sum
    [T, H] of Σ_k weight · down(silu(gate(x)) · up(x)) over the choices routed to its experts.
    """

    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype, fp8: bool = False) -> None:
        super().__init__()
        c = config
        self.n_experts = ctx.num_physical_experts(c.n_routed_experts)  # slots over all ranks
        self.local = ctx.local_experts(c.n_routed_experts)
        self.inter = split_size(c.moe_intermediate_size, ctx.moe_tp_size, "moe_intermediate_size")
        E, H, I = len(self.local), c.hidden_size, self.inter
        self.dtype, self.fp8 = dtype, fp8
        w_dtype = fp8_format.FP8 if fp8 else dtype
        self.w13 = nn.Parameter(torch.empty(E, 2 * I, H, dtype=w_dtype, device=ctx.device), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(E, H, I, dtype=w_dtype, device=ctx.device), requires_grad=False)
        if fp8:
            self.w13_block = (fp8_format.local_block(I, True), fp8_format.BLOCK)
            self.w2_block = (fp8_format.BLOCK, fp8_format.local_block(I, ctx.moe_tp_size > 1))
            for name, block in (("w13", self.w13_block), ("w2", self.w2_block)):
                grid = fp8_format.scale_shape(tuple(getattr(self, name).shape[1:]), block)
                self.register_buffer(f"{name}_scale_inv", torch.empty(E, *grid, dtype=torch.float32, device=ctx.device))
            self.scratch = Scratch()  # replaced by the model's shared one (fp8_gemm.share_scratch)
        dense_per_choice = c.n_routed_experts / c.num_experts_per_tok * 3 * I * H
        self.dense_limit = DENSE_LIMIT if dense_per_choice <= DENSE_WASTE else 0  # T × E_local; 0: never

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if x.shape[0] * len(self.local) <= self.dense_limit:
            return self._dense(x, weights, ids)
        return self._grouped(x, weights, ids)

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per local expert, only the tokens routed to it (work ∝ T·k): the choices sorted by expert,
        then every expert's SwiGLU on its run of them."""
        T, H = x.shape
        k = ids.shape[1]
        flat = ids.flatten()  # [T*k] one entry per (token, choice)
        order = flat.argsort(stable=True)  # choices grouped by expert
        counts = torch.bincount(flat, minlength=self.n_experts)  # [E] choices per expert
        bounds = F.pad(counts.cumsum(0), (1, 0))  # [E + 1] where each expert's choices start in order
        lo, hi = bounds[[self.local.start, self.local.stop]].tolist()
        mine = order[lo:hi]  # this rank's experts' choices
        x_mine = x[mine // k]  # [n, H] tokens, grouped by (local) expert
        counts = counts[self.local.start : self.local.stop]
        routed = x.new_zeros(T * k, H)
        routed[mine] = self._swiglu(x_mine, counts)  # back to (token, choice) order; other ranks' stay 0
        return (routed.view(T, k, H) * weights.unsqueeze(-1).to(x.dtype)).sum(dim=1)

    def stacks(self) -> dict[str, torch.Tensor]:
        """The per-slot stacked tensors (weights and FP8 scales): what moving an expert moves."""
        names = ("w13", "w2", "w13_scale_inv", "w2_scale_inv") if self.fp8 else ("w13", "w2")
        return {n: getattr(self, n) for n in names}

    def swiglu_sorted(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x [n, H] sorted by local slot, ``counts`` [E_local] rows per slot -> each slot's expert
        SwiGLU on its rows [n, H] (the all-to-all dispatcher's compute)."""
        return self._swiglu(x, counts)

    def _swiglu(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x [n, H] sorted by local expert, ``counts`` [E_local] rows per expert -> each expert's
        SwiGLU on its rows [n, H]."""
        if not self.fp8:
            swiglu = self._swiglu_grouped_mm if grouped_mm_runs(x, self.inter) else self._swiglu_per_expert
            return swiglu(x, counts)
        if grouped_mm_runs(x, self.inter) and not block_scaled_mm_runs(x, self.w13[0], self.w13_block):
            active = counts.nonzero().flatten().tolist()  # dequantise only the experts that have tokens
            return self._swiglu_grouped_mm(x, counts[active], self._dequantized("w13", active, 0),
                                           self._dequantized("w2", active, 1))  # fmt: skip
        s13, s2, b13, b2 = self.w13_scale_inv, self.w2_scale_inv, self.w13_block, self.w2_block
        return self._swiglu_per_expert(x, counts, lambda h, j: fp8_linear(h, self.w13[j], s13[j], b13, self.scratch),
                                       lambda h, j: fp8_linear(h, self.w2[j], s2[j], b2, self.scratch))  # fmt: skip

    def _swiglu_grouped_mm(self, x: torch.Tensor, counts: torch.Tensor, w13: torch.Tensor | None = None,
                           w2: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The SwiGLU of each group of rows (``counts`` [G] rows each) with its stacked weights
        (w13 [G, 2I, H], w2 [G, H, I]; default this rank's stacks) as two grouped GEMMs (no loop,
        no weight copy)."""
        w13, w2 = self.w13 if w13 is None else w13, self.w2 if w2 is None else w2
        offs = counts.cumsum(0).to(torch.int32)  # end row of each expert's run
        h = F.grouped_mm(x, w13.transpose(1, 2), offs=offs)  # [n, 2I] gate | up
        return F.grouped_mm(F.silu(h[:, : self.inter]) * h[:, self.inter :], w2.transpose(1, 2), offs=offs)

    def _swiglu_per_expert(self, x: torch.Tensor, counts: torch.Tensor, lin13=None, lin2=None) -> torch.Tensor:
        """The same, expert by expert (where torch has no grouped GEMM for the device or dtype, and for
        FP8 experts on the block-scaled kernel): ``lin13(rows, j)``, ``lin2(rows, j)`` apply expert j's
        w13, w2 (default: F.linear with the stacks)."""
        lin13 = lin13 or (lambda h, j: F.linear(h, self.w13[j]))
        lin2 = lin2 or (lambda h, j: F.linear(h, self.w2[j]))
        y = torch.empty_like(x)
        bounds = [0, *accumulate(counts.tolist())]
        for j, (a, b) in enumerate(pairwise(bounds)):
            if a < b:
                h = lin13(x[a:b], j)  # [n_j, 2I] gate | up
                y[a:b] = lin2(F.silu(h[:, : self.inter]) * h[:, self.inter :], j)
        return y

    def _dequantized(self, name: str, experts: list[int] | None, slot: int) -> torch.Tensor:
        """Stack ``name`` (w13 or w2) of the given local experts (None: all) in the compute dtype: the
        parameter itself, or (FP8) dequantised into scratch ``slot``."""
        w = getattr(self, name)
        if not self.fp8:
            return w if experts is None else w[experts]
        scale, block = getattr(self, f"{name}_scale_inv"), getattr(self, f"{name}_block")
        if experts is None:
            return dequantized(w, scale, block, self.dtype, self.scratch, slot)
        out = self.scratch.take((len(experts), *w.shape[1:]), self.dtype, w.device, slot)
        for i, j in enumerate(experts):
            fp8_format.dequantize_into(out[i], w[j], scale[j], block)
        return out

    def _dense(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Same partial sum, every local expert on every token, weighted by the combine weights
        (exact zeros where a token is not routed to the expert): two GEMMs for all the experts."""
        T, E, I = x.shape[0], len(self.local), self.inter
        combine = x.new_zeros(T, self.n_experts).scatter_(1, ids, weights.to(x.dtype))
        combine = combine[:, self.local.start : self.local.stop]  # [T, E] this rank's experts
        w13, w2 = self._dequantized("w13", None, 0), self._dequantized("w2", None, 1)
        h = F.linear(x, w13.flatten(0, 1)).view(T, E, 2 * I)  # [T, E, 2I]
        a = F.silu(h[..., :I]) * h[..., I:] * combine[..., None]  # [T, E, I]
        return torch.bmm(a.transpose(0, 1), w2.transpose(1, 2)).sum(dim=0)  # [E,T,H] -> [T,H]


def grouped_mm_runs(x: torch.Tensor, inter: int) -> bool:
    """Whether ``F.grouped_mm`` (torch >= 2.10) takes the operands of a grouped SwiGLU on x [n, H]
    with intermediate size ``inter``: 32- or 16-bit floats, rows a multiple of 16 bytes, on the CPU
    or a CUDA device of compute capability >= 8.0."""
    if not hasattr(F, "grouped_mm") or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if (x.shape[1] * x.element_size()) % 16 or (inter * x.element_size()) % 16:
        return False
    return x.device.type == "cpu" or (
        x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) >= (8, 0)
    )


class MoE(nn.Module):
    """Shared + routed experts; x [T, H] (the group's batch) -> [T, H] (combined over the ranks)."""

    def __init__(self, config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype, fp8: bool = False) -> None:
        super().__init__()
        c = config
        self.ctx = ctx
        self.gate = Gate(c, ctx, dtype)  # the router stays in the compute dtype
        self.experts = RoutedExperts(c, ctx, dtype, fp8)
        self.placement = ExpertPlacement(c.n_routed_experts, ctx)
        self.dispatcher = AllToAllDispatcher(ctx, len(self.experts.local)) if ctx.moe_a2a else None
        self.shared_experts = None
        if c.n_shared_experts:
            shared = c.moe_intermediate_size * c.n_shared_experts
            self.shared_experts = MLP(c.hidden_size, shared, ctx, ctx.tp_size,
                                      "moe_intermediate_size * n_shared_experts", reduce=False, dtype=dtype,
                                      fp8=fp8)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        a, b = token_share(T, self.ctx.tp_size, self.ctx.tp_rank)
        if self.dispatcher is None:
            weights, ids = self.gate(x)  # [T, k], [T, k] logical expert ids
            self.placement.count(ids[a:b])
            y = self.experts(x, weights, self.placement.physical(ids))
        else:
            weights, ids = self.gate(x[a:b])  # only this rank's share
            self.placement.count(ids)
            routed = self.dispatcher.routed(x[a:b], weights, self.placement.physical(ids, a), self.experts)
            y = routed if self.ctx.tp_size == 1 else F.pad(routed, (0, 0, a, T - b))  # [T, H], 0 off my share
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return all_reduce(y, self.ctx) if T else y  # routed + shared partial sums of the group's ranks
