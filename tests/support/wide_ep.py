"""Ranks of a data-parallel-attention / all-to-all-EP model in real processes (gloo), for tests and
benchmarks: each attention group greedily decodes its own prompts over its own paged cache on its
own schedule (idle steps join the MoE all-to-alls through ``idle_step``), optionally rebalancing
the experts (EPLB) between two steps."""

from __future__ import annotations

from pathlib import Path

import torch

from fathom.model.attention_metadata import AttentionMetadata, contiguous_layout
from fathom.model.kv_cache import allocate_kv_caches


class GroupDecode:
    """Greedy decode of ``prompts`` (one attention group's) over a fresh paged cache, one step at a
    time: the first step prefills every prompt, each later one decodes a token per prompt."""

    def __init__(self, model, prompts: list[list[int]], steps: int, block_size: int = 3) -> None:
        self.model, self.block_size = model, block_size
        self.seqs = [list(p) for p in prompts]
        self.prompt_lens = [len(p) for p in prompts]
        self.tables, n_blocks = contiguous_layout([len(p) + steps for p in prompts], block_size)
        self.caches = allocate_kv_caches(model.config, n_blocks, block_size, model.dtype, model.ctx.device)
        self.q_lens = list(self.prompt_lens)

    def step(self) -> None:
        dev = self.model.ctx.device
        meta = AttentionMetadata.build(
            self.q_lens, [len(s) for s in self.seqs], self.tables, self.block_size, dev
        )
        ids = torch.tensor([t for s, q in zip(self.seqs, self.q_lens, strict=True) for t in s[len(s) - q:]],
                           device=dev)  # fmt: skip
        hidden = self.model(ids, meta.positions(), self.caches, meta)
        nxt = self.model.compute_logits(hidden[meta.query_start_loc[1:] - 1]).argmax(dim=-1).tolist()
        for s, t in zip(self.seqs, nxt, strict=True):
            s.append(int(t))
        self.q_lens = [1] * len(self.seqs)

    def generated(self) -> list[list[int]]:
        return [s[n:] for s, n in zip(self.seqs, self.prompt_lens, strict=True)]


def run_wide_rank(rank: int, world: int, dp: int, redundant: int, port: int, job: dict, out_dir: str) -> None:
    """One rank (a ``torch.multiprocessing.spawn`` target). ``job``: {"path", "groups": [prompts of
    group g], "decode": n, "delays": [steps group g stays idle first], "rebalance_at": step or None,
    "cuda": run on cuda:<rank> over nccl (default: cpu, gloo)}.
    Saves {"greedy": its group's tokens, "rebalance": (before, after, moved) or None,
    "kv_bytes": its cache bytes} to ``out_dir/<rank>.pt``."""
    from fathom.model.loader import load_model
    from fathom.model.rebalance import rebalance
    from fathom.parallel.context import destroy_parallel, init_parallel

    torch.set_num_threads(1)
    ctx = init_parallel(rank, world, world, dp_size=dp, moe_a2a=True, num_redundant_experts=redundant,
                        master_port=port, device=f"cuda:{rank}" if job.get("cuda") else "cpu",
                        timeout_s=120)  # fmt: skip
    try:
        model = load_model(job["path"], ctx)
        g = ctx.dp_rank
        delay, n = job["delays"][g], job["decode"]
        group = GroupDecode(model, job["groups"][g], n)
        total = max(d + n for d in job["delays"])
        balanced = None
        for s in range(total):
            if s == job.get("rebalance_at"):
                r = rebalance(model)
                balanced = (r.imbalance_before, r.imbalance_after, r.moved)
            if delay <= s < delay + n:
                group.step()
            else:
                model.idle_step()
        kv = sum(c.numel() * c.element_size() for c in group.caches)
        result = {"greedy": group.generated(), "rebalance": balanced, "kv_bytes": kv}
    finally:
        destroy_parallel()
    torch.save(result, Path(out_dir) / f"{rank}.pt")
