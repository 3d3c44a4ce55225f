"""Collectives over a ParallelContext's tensor-parallel group; no-ops when W = 1.

Model code calls these instead of torch.distributed so that W = 1 and W = N run the same code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fathom.parallel.context import ParallelContext


def all_reduce(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Sum ``x`` over the W ranks (in place when W > 1); returns ``x``."""
    if ctx.tp_group is not None:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=ctx.tp_group)
    return x


def all_gather_last_dim(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Concatenate every rank's ``x`` along the last dim, rank order: [..., D] -> [..., W * D]."""
    if ctx.tp_group is None:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(parts, x.contiguous(), group=ctx.tp_group)
    return torch.cat(parts, dim=-1)


def broadcast_from_first(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Overwrite ``x`` on every rank with rank 0's ``x`` (same shape and dtype everywhere); returns ``x``."""
    if ctx.tp_group is not None:
        dist.broadcast(x, src=dist.get_global_rank(ctx.tp_group, 0), group=ctx.tp_group)
    return x
