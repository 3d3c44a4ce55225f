"""Linear layers holding this rank's shard of a weight (Megatron column/row parallelism).

The layers only know their local shapes and whether to all-reduce; which slice of the checkpoint
tensor they hold is declared in ``fathom.model.weights.sharding``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fathom.parallel.comm import all_reduce
from fathom.parallel.context import ParallelContext


def split_size(total: int, parts: int, what: str) -> int:
    """total // parts, or a ValueError naming ``what`` when it does not divide."""
    if total % parts:
        raise ValueError(f"{what}={total} is not divisible by {parts} ranks")
    return total // parts


class Linear(nn.Module):
    """y = x W^T with a local weight [out_local, in_local]; optionally all-reduced over W ranks."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ctx: ParallelContext,
        *,
        reduce: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.reduce = reduce
        w = torch.empty(out_features, in_features, dtype=dtype, device=ctx.device)
        self.weight = nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        return all_reduce(y, self.ctx) if self.reduce else y


def replicated(in_f: int, out_f: int, ctx: ParallelContext, dtype: torch.dtype | None = None) -> Linear:
    """Full weight on every rank."""
    return Linear(in_f, out_f, ctx, dtype=dtype)


def column_parallel(
    in_f: int, out_f: int, ctx: ParallelContext, parts: int, what: str, dtype: torch.dtype | None = None
) -> Linear:
    """Output features split in ``parts``; the output stays sharded."""
    return Linear(in_f, split_size(out_f, parts, what), ctx, dtype=dtype)


def row_parallel(
    in_f: int,
    out_f: int,
    ctx: ParallelContext,
    parts: int,
    what: str,
    *,
    reduce: bool,
    dtype: torch.dtype | None = None,
) -> Linear:
    """Input features split in ``parts``; partial sums, all-reduced when ``reduce``."""
    return Linear(split_size(in_f, parts, what), out_f, ctx, reduce=reduce, dtype=dtype)
