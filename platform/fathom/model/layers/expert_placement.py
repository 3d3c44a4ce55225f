"""Where a MoE layer's logical experts live: physical slots, the gate's logical -> physical map,
the per-expert token counts EPLB balances on, and moving expert weights to a new placement.

P = E + R physical slots (``ParallelContext.local_experts`` gives each rank its contiguous
range); ``phy2log[p]`` is the logical expert slot p holds (initially p % E). The gate routes a
(token, choice) of logical expert e to replica ``(row + choice) % replicas(e)`` of e's slots in
slot order: deterministic (every rank of a group derives the same), and it spreads an expert's
tokens evenly over its replicas. All replicas of e hold identical weights, so the output does not
depend on the replica chosen.
"""

from __future__ import annotations

import torch

from fathom.parallel.comm import all_to_all
from fathom.parallel.context import ParallelContext


class ExpertPlacement:
    """One MoE layer's logical -> physical expert map and its token counts."""

    def __init__(self, n_logical: int, ctx: ParallelContext) -> None:
        self.n_logical = n_logical
        self.n_physical = ctx.num_physical_experts(n_logical)
        self.device = ctx.device
        # Long[E] (logical) routed (token, choice) pairs of this rank's share of the tokens, since reset
        self.load = torch.zeros(n_logical, dtype=torch.long, device=ctx.device)
        self.set([p % n_logical for p in range(self.n_physical)])

    def set(self, phy2log: list[int]) -> None:
        """Adopt a placement: the logical expert of every physical slot (each expert at least once)."""
        if len(phy2log) != self.n_physical or sorted(set(phy2log)) != list(range(self.n_logical)):
            raise ValueError(f"a placement maps {self.n_physical} slots onto all {self.n_logical} experts")
        self.phy2log = list(phy2log)
        self.identity = self.phy2log == list(range(self.n_logical))
        replicas = [[p for p, e in enumerate(phy2log) if e == log] for log in range(self.n_logical)]
        width = max(len(r) for r in replicas)
        table = [r + [r[0]] * (width - len(r)) for r in replicas]
        self.log2phy = torch.tensor(table, dtype=torch.long, device=self.device)  # [E, max replicas]
        self.logcnt = torch.tensor([len(r) for r in replicas], dtype=torch.long, device=self.device)

    def count(self, ids: torch.Tensor) -> None:
        """Add the logical expert ids [n, k] of this rank's share of a step's tokens to ``load``."""
        self.load += torch.bincount(ids.flatten(), minlength=self.n_logical)

    def physical(self, ids: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """Logical ids Long[n, k] of rows ``first_row ...`` of the batch -> physical slots Long[n, k]."""
        if self.identity:
            return ids
        n, k = ids.shape
        turn = torch.arange(first_row, first_row + n, device=ids.device)[:, None] + torch.arange(
            k, device=ids.device
        )
        return self.log2phy[ids, turn % self.logcnt[ids]]


def migrate(stacks: dict[str, torch.Tensor], local: range, old: list[int], new: list[int],
            ctx: ParallelContext) -> None:  # fmt: skip
    """Collective over all ranks (each with the same ``old`` and ``new`` placements): refill this
    rank's stacked expert tensors (``stacks``: name -> [len(local), ...], e.g. w13, w2 and their FP8
    scales) for placement ``new``. A slot whose expert the rank already holds is copied locally;
    otherwise the expert's slice comes from the first rank holding it under ``old`` with the same
    ``moe_tp_rank`` (the same slice of the intermediate dim), by one all-to-all per tensor."""
    S, mt, W = len(local), ctx.moe_tp_size, ctx.world_size
    shard_of = [p // S for p in range(len(old))]  # expert shard of each slot
    plan_send: list[list[int]] = [[] for _ in range(W)]  # my old local slots to send, per destination
    plan_recv: list[list[int]] = [[] for _ in range(W)]  # my new local slots to fill, per source
    keep: list[tuple[int, int]] = []  # (new local slot, old local slot) copied on this rank
    for p, e in enumerate(new):
        dst_shard = shard_of[p]
        held = [q for q, f in enumerate(old) if f == e]
        same = [q for q in held if shard_of[q] == dst_shard]
        src_slot = same[0] if same else held[0]
        dst = dst_shard * mt + ctx.moe_tp_rank
        src = shard_of[src_slot] * mt + ctx.moe_tp_rank
        if dst == ctx.rank and src == ctx.rank:
            keep.append((p - local.start, src_slot - local.start))
        elif dst == ctx.rank:
            plan_recv[src].append(p - local.start)
        elif src == ctx.rank:
            plan_send[dst].append(src_slot - local.start)
    send_rows = [j for rows in plan_send for j in rows]
    recv_rows = [j for rows in plan_recv for j in rows]
    with torch.no_grad():
        for t in stacks.values():
            wire = t.view(torch.uint8) if t.element_size() == 1 else t  # gloo has no float8
            fresh = torch.empty_like(wire)
            for j_new, j_old in keep:
                fresh[j_new] = wire[j_old]
            got = all_to_all(wire[send_rows], [len(r) for r in plan_send], [len(r) for r in plan_recv], ctx)
            if recv_rows:
                fresh[recv_rows] = got
            wire.copy_(fresh)
