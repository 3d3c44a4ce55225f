"""Vocab-parallel embedding and LM head: TP rank r holds vocab rows [r*P, min(V, (r+1)*P)), P = ceil(V/TP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fathom.parallel.comm import all_gather_last_dim, all_reduce
from fathom.parallel.context import ParallelContext


def vocab_range(vocab_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the vocab rows rank ``rank`` holds (the last ranks may hold fewer)."""
    per = -(-vocab_size // world_size)
    start = min(rank * per, vocab_size)
    return start, min(start + per, vocab_size)


class VocabParallelEmbedding(nn.Module):
    """Looks up local rows, zeroes ids held elsewhere, all-reduces: [T] -> [T, H]."""

    def __init__(self, vocab_size: int, hidden: int, ctx: ParallelContext, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.ctx = ctx
        self.start, self.end = vocab_range(vocab_size, ctx.tp_rank, ctx.tp_size)
        w = torch.empty(self.end - self.start, hidden, dtype=dtype, device=ctx.device)
        self.weight = nn.Parameter(w, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.ctx.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = (ids >= self.start) & (ids < self.end)
        x = F.embedding((ids - self.start).clamp(0, max(self.end - self.start - 1, 0)), self.weight)
        x = x * local[:, None].to(x.dtype)
        return all_reduce(x, self.ctx)


class ParallelLMHead(nn.Module):
    """Local vocab rows of the output projection; logits gathered to the full vocab on every rank."""

    def __init__(self, vocab_size: int, hidden: int, ctx: ParallelContext, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.ctx = ctx
        self.vocab_size = vocab_size
        self.per = -(-vocab_size // ctx.tp_size)
        self.start, self.end = vocab_range(vocab_size, ctx.tp_rank, ctx.tp_size)
        w = torch.empty(self.end - self.start, hidden, dtype=dtype, device=ctx.device)
        self.weight = nn.Parameter(w, requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] -> float32 logits [N, vocab_size]."""
        logits = F.linear(hidden, self.weight).float()  # [N, end - start]
        if self.ctx.tp_size == 1:
            return logits
        pad = self.per - logits.shape[-1]
        if pad:
            logits = F.pad(logits, (0, pad))
        return all_gather_last_dim(logits, self.ctx)[:, : self.vocab_size]
