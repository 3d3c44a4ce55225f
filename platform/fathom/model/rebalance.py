"""Applying EPLB to a running model: gather the MoE layers' token counts over all ranks, compute
a new placement per layer (``fathom.model.eplb``) and move expert weights to it between steps.
The KV cache and every request's state are untouched: the model computes the same function."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fathom.model.eplb import imbalance, rank_loads, rebalance_layer
from fathom.model.layers.expert_placement import migrate
from fathom.parallel.comm import all_reduce_world


@dataclass(frozen=True)
class RebalanceResult:
    """Worst layer's max / mean tokens per expert shard over the window, under the old placement
    and (predicted) under the new one; ``expert_load`` [layer][expert]: the window's counts."""

    imbalance_before: float
    imbalance_after: float
    expert_load: list[list[int]]
    moved: int  # physical slots whose expert changed


def gather_load(model) -> list[list[int]]:
    """Collective: every MoE layer's per-logical-expert (token, choice) count since the last reset,
    summed over all ranks (each counted only its share of its group's tokens)."""
    layers = model.moe_layers()
    if not layers:
        return []
    load = torch.stack([m.placement.load for m in layers])
    return all_reduce_world(load, model.ctx).tolist()


@torch.inference_mode()
def rebalance(model, num_nodes: int = 1) -> RebalanceResult:
    """Collective over all ranks (call between steps, on every rank): rebalance every MoE layer on
    the counts gathered since the last call, move the weights, reset the counts."""
    ctx, config = model.ctx, model.config
    shards = ctx.ep_size
    loads = gather_load(model)
    before = after = 1.0
    moved = 0
    for m, w in zip(model.moe_layers(), loads, strict=True):
        old = m.placement.phy2log
        new = rebalance_layer(w, len(old), config.num_groups, num_nodes, shards)
        before = max(before, imbalance(rank_loads(w, old, shards)))
        after = max(after, imbalance(rank_loads(w, new, shards)))
        if new != old:
            migrate(m.experts.stacks(), m.experts.local, old, new, ctx)
            m.placement.set(new)
            moved += sum(a != b for a, b in zip(old, new, strict=True))
        m.placement.load.zero_()
    return RebalanceResult(before, after, loads, moved)
