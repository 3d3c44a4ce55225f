"""Collectives over a ParallelContext's groups; no-ops when there is no group.

Model code calls these instead of torch.distributed so that W = 1 and W = N run the same code:
``all_reduce`` / ``all_gather_last_dim`` over the attention group (``tp_group``), ``all_to_all`` /
``all_reduce_world`` over every rank of the instance.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fathom.parallel.context import ParallelContext


def all_reduce(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Sum ``x`` over the TP ranks of this rank's attention group (in place); returns ``x``."""
    if ctx.tp_group is not None:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=ctx.tp_group)
    return x


def all_gather_last_dim(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Concatenate the group's ranks' ``x`` along the last dim, rank order: [..., D] -> [..., TP * D]."""
    if ctx.tp_group is None:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.tp_size)]
    dist.all_gather(parts, x.contiguous(), group=ctx.tp_group)
    return torch.cat(parts, dim=-1)


def world_group(ctx: ParallelContext):
    """The process group over all W ranks (None when W == 1)."""
    if ctx.world_size == 1:
        return None
    return ctx.ep_group if ctx.ep_group is not None else ctx.tp_group


def all_reduce_world(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Sum ``x`` over all W ranks of the instance (in place); returns ``x``."""
    group = world_group(ctx)
    if group is not None:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def all_to_all(x: torch.Tensor, send_counts: list[int], recv_counts: list[int], ctx: ParallelContext) -> torch.Tensor:
    """Rows of ``x`` [sum(send_counts), ...] go, in rank order, ``send_counts[j]`` to rank j; returns
    the rows received [sum(recv_counts), ...], grouped by source rank in rank order. Every rank of
    the instance must call it (with zero counts where it has nothing to send)."""
    out = x.new_empty((sum(recv_counts), *x.shape[1:]))
    group = world_group(ctx)
    if group is None:
        return out.copy_(x)
    dist.all_to_all_single(out, x.contiguous(), recv_counts, send_counts, group=group)
    return out


def exchange_counts(send_counts: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Long[W] rows this rank sends to each rank -> Long[W] rows it receives from each."""
    group = world_group(ctx)
    if group is None:
        return send_counts.clone()
    recv = torch.empty_like(send_counts)
    dist.all_to_all_single(recv, send_counts.contiguous(), group=group)
    return recv


def broadcast_from_first(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """Overwrite ``x`` on every rank with rank 0's ``x`` (same shape and dtype everywhere); returns ``x``."""
    if ctx.tp_group is not None:
        dist.broadcast(x, src=dist.get_global_rank(ctx.tp_group, 0), group=ctx.tp_group)
    return x
