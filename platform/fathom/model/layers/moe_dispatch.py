"""All-to-all dispatch and combine of routed tokens (data-parallel attention, wide EP).

Each rank holds its own tokens (its attention group's share, ``token_share``) and ``S`` physical
expert slots (``ParallelContext.local_experts``, EP = W). ``AllToAllDispatcher.routed`` sends every
(token, choice) to the rank owning its physical slot, runs the rank's experts grouped on what it
received, and sends the results back to be weighted and summed: three ``all_to_all_single``
calls (counts, tokens, slot ids) out and one back, over gloo on CPU and nccl on CUDA.

The seam: a dispatcher is anything with ``routed(x, weights, slots, experts) -> [n, H]`` that every
rank calls once per MoE layer per step, idle ranks with n = 0 (so nothing deadlocks); a DeepEP-style
kernel library on GPU would implement the same contract.
"""

from __future__ import annotations

import torch

from fathom.parallel.comm import all_to_all, exchange_counts
from fathom.parallel.context import ParallelContext


def token_share(num_tokens: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of rows that rank ``index`` of ``parts`` handles out of ``num_tokens`` rows
    replicated over them (contiguous, sizes differing by at most one)."""
    per, extra = divmod(num_tokens, parts)
    start = index * per + min(index, extra)
    return start, start + per + (index < extra)


class AllToAllDispatcher:
    """Dispatch/combine by ``torch.distributed.all_to_all_single`` over all W ranks."""

    def __init__(self, ctx: ParallelContext, slots_per_rank: int) -> None:
        self.ctx, self.slots_per_rank = ctx, slots_per_rank
        # (token, choice) rows sent to other ranks, and received for this rank's experts, so far:
        # the bytes the exchange moves and the load EPLB balances (benchmarks/wide_ep.py)
        self.remote_rows = self.received_rows = 0

    def routed(self, x: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor, experts) -> torch.Tensor:
        """x [n, H] this rank's tokens, weights float32 [n, k], slots Long[n, k] physical expert slots
        -> Σ_k weight · expert(x) [n, H], computed by the slots' owners."""
        n, k = slots.shape
        W = self.ctx.world_size
        flat = slots.flatten()
        order = flat.argsort(stable=True)  # (token, choice) rows grouped by owner rank, then slot
        send = torch.bincount(flat // self.slots_per_rank, minlength=W)
        recv = exchange_counts(send, self.ctx)
        sc, rc = send.tolist(), recv.tolist()
        self.remote_rows += sum(sc) - sc[self.ctx.rank]
        self.received_rows += sum(rc)
        got_x = all_to_all(x[order // k], sc, rc, self.ctx)  # [m, H] tokens for my experts
        got_slot = all_to_all(flat[order], sc, rc, self.ctx) - experts.local.start  # [m] local slot
        by_slot = got_slot.argsort(stable=True)
        counts = torch.bincount(got_slot, minlength=len(experts.local))
        y = torch.empty_like(got_x)
        if y.shape[0]:
            y[by_slot] = experts.swiglu_sorted(got_x[by_slot], counts)
        back = all_to_all(y, rc, sc, self.ctx)  # [n·k, H] in `order`
        out = torch.empty_like(back)
        out[order] = back
        return (out.view(n, k, x.shape[1]) * weights.unsqueeze(-1).to(x.dtype)).sum(dim=1)
