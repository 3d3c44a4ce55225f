"""Linear layers holding this rank's shard of a weight (Megatron column/row parallelism).

The layers only know their local shapes and whether to all-reduce; which slice of the checkpoint
tensor they hold is declared in ``fathom.model.weights.sharding``. A layer built with ``fp8=True``
holds its weight FP8-resident (float8_e4m3fn ``weight`` plus float32 ``weight_scale_inv`` over its
local block grid, ``fathom.model.weights.fp8``) and multiplies through ``fp8_gemm.fp8_linear``:
the model code calls it the same way either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fathom.model.layers.fp8_gemm import Scratch, dequantized, fp8_linear
from fathom.model.weights.fp8 import FP8, local_block, scale_shape
from fathom.parallel.comm import all_reduce
from fathom.parallel.context import ParallelContext


def split_size(total: int, parts: int, what: str) -> int:
    """total // parts, or a ValueError naming ``what`` when it does not divide."""
    if total % parts:
        raise ValueError(f"{what}={total} is not divisible by {parts} ranks")
    return total // parts


class Linear(nn.Module):
    """y = x W^T with a local weight [out_local, in_local]; optionally all-reduced over W ranks.

    ``fp8_block`` (rows, cols per scale block) makes the weight FP8-resident; None keeps ``dtype``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ctx: ParallelContext,
        *,
        reduce: bool = False,
        dtype: torch.dtype | None = None,
        fp8_block: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.reduce = reduce
        self.fp8_block = fp8_block
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()  # compute dtype
        w_dtype = dtype if fp8_block is None else FP8
        w = torch.empty(out_features, in_features, dtype=w_dtype, device=ctx.device)
        self.weight = nn.Parameter(w, requires_grad=False)
        if fp8_block is not None:
            grid = scale_shape((out_features, in_features), fp8_block)
            self.register_buffer("weight_scale_inv", torch.empty(grid, dtype=torch.float32, device=ctx.device))
            self.scratch = Scratch()  # replaced by the model's shared one (fp8_gemm.share_scratch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_block is None:
            y = F.linear(x, self.weight)
        else:
            y = fp8_linear(x, self.weight, self.weight_scale_inv, self.fp8_block, self.scratch)
        return all_reduce(y, self.ctx) if self.reduce else y

    def dense_weight(self) -> torch.Tensor:
        """The weight in the compute dtype: the parameter itself, or (FP8-resident) dequantised into
        the scratch buffer, valid until the next FP8 layer runs."""
        if self.fp8_block is None:
            return self.weight
        return dequantized(self.weight, self.weight_scale_inv, self.fp8_block, self.dtype, self.scratch)


def replicated(in_f: int, out_f: int, ctx: ParallelContext, dtype: torch.dtype | None = None,
               fp8: bool = False) -> Linear:  # fmt: skip
    """Full weight on every rank."""
    return Linear(in_f, out_f, ctx, dtype=dtype, fp8_block=_block(False, out_f, False, in_f) if fp8 else None)


def column_parallel(
    in_f: int, out_f: int, ctx: ParallelContext, parts: int, what: str, dtype: torch.dtype | None = None,
    fp8: bool = False,
) -> Linear:  # fmt: skip
    """Output features split in ``parts``; the output stays sharded."""
    out_local = split_size(out_f, parts, what)
    block = _block(parts > 1, out_local, False, in_f) if fp8 else None
    return Linear(in_f, out_local, ctx, dtype=dtype, fp8_block=block)


def row_parallel(
    in_f: int,
    out_f: int,
    ctx: ParallelContext,
    parts: int,
    what: str,
    *,
    reduce: bool,
    dtype: torch.dtype | None = None,
    fp8: bool = False,
) -> Linear:
    """Input features split in ``parts``; partial sums, all-reduced when ``reduce``."""
    in_local = split_size(in_f, parts, what)
    block = _block(False, out_f, parts > 1, in_local) if fp8 else None
    return Linear(in_local, out_f, ctx, reduce=reduce, dtype=dtype, fp8_block=block)


def _block(rows_split: bool, rows: int, cols_split: bool, cols: int) -> tuple[int, int]:
    return local_block(rows, rows_split), local_block(cols, cols_split)
