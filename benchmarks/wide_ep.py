"""Wide expert parallelism on 4 ranks of this machine (gloo), one run, side by side:

(a) today's layout: TP = 4 attention, EP = 4 experts, MoE combined by one all-reduce (every rank
    holds all 64 requests' tokens and latent KV);
(b) DeepSeek's: D = 4 data-parallel attention groups of TP = 1 (16 requests each, their own
    latent KV), MoE by all-to-all dispatch/combine over the 4 ranks;
(c) EPLB on (b) with a skewed routing trace (two hot experts per layer, by gate bias): tokens per
    rank per MoE layer (max / mean) on the first pass, then rebalanced with 4 redundant experts,
    on a second pass over the same requests.

Model: the built-in demo checkpoint (DeepSeek-V3 architecture, 4 layers of which 3 MoE, hidden 256,
16 routed experts top-4, float32). 64 requests of 32 random prompt tokens, 16 greedy tokens each.
Printed: decode throughput (wall, whole instance), bytes moved per token per MoE layer over all
ranks ((a): a ring all-reduce sends 2(W-1)/W of the [T, H] partial sums per rank; (b): the
dispatched and combined rows the dispatchers counted, plus slot ids and counts), per-rank latent
KV bytes, and (c)'s balance. CPU figures are about bytes and balance, not speed.

Usage: PYTHONPATH=platform:tests python benchmarks/wide_ep.py [--requests 64 --decode 16]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers: support.*
from support.wide_ep import GroupDecode

W = 4


def contexts(rank: int, redundant: int = 0):
    from fathom.parallel.context import ParallelContext

    world = dist.group.WORLD
    tp4 = ParallelContext(rank=rank, world_size=W, ep_size=W, tp_group=world)
    dp4 = ParallelContext(rank=rank, world_size=W, ep_size=W, dp_size=W, moe_a2a=True, ep_group=world,
                          num_redundant_experts=redundant)  # fmt: skip
    return tp4, dp4


def decode(model, prompts, steps) -> tuple[float, int]:
    """(seconds, latent KV bytes) of prefilling ``prompts`` and decoding ``steps`` tokens each."""
    dist.barrier()
    t0 = time.perf_counter()
    run = GroupDecode(model, prompts, steps)
    for _ in range(steps):
        run.step()
    dist.barrier()
    return time.perf_counter() - t0, sum(c.numel() * c.element_size() for c in run.caches)


def received_per_layer(model) -> list[int]:
    return [m.dispatcher.received_rows for m in model.moe_layers()]


def skew(model) -> None:
    """Two hot experts per MoE layer (the same on every rank: the gate is replicated)."""
    with torch.no_grad():
        for m in model.moe_layers():
            m.gate.e_score_correction_bias[[5, 6]] += 0.5


def rank_main(rank: int, port: int, path: str, args, out_dir: str) -> None:
    from fathom.model.loader import load_model
    from fathom.model.rebalance import rebalance
    from fathom.parallel.context import destroy_parallel, init_parallel

    torch.set_num_threads(1)
    init_parallel(rank, W, W, master_port=port, device="cpu", timeout_s=600)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (args.prompt,), generator=g).tolist() for _ in range(args.requests)]
    res = {}
    try:
        tp4, dp4 = contexts(rank)
        model = load_model(path, tp4)
        res["a_s"], res["a_kv"] = decode(model, prompts, args.decode)
        model = load_model(path, dp4)
        mine = prompts[rank::W]  # group `rank`'s requests
        res["b_s"], res["b_kv"] = decode(model, mine, args.decode)
        res["b_remote_rows"] = sum(m.dispatcher.remote_rows for m in model.moe_layers())
        _, dp4r = contexts(rank, redundant=args.redundant)
        model = load_model(path, dp4r)
        skew(model)
        decode(model, mine, args.decode)
        before = received_per_layer(model)
        r = rebalance(model)
        decode(model, mine, args.decode)
        res["c_before"] = before
        res["c_after"] = [a - b for a, b in zip(received_per_layer(model), before, strict=True)]
        res["c_predicted"] = (r.imbalance_before, r.imbalance_after)
        res["moe_layers"], res["hidden"] = len(model.moe_layers()), model.config.hidden_size
    finally:
        destroy_parallel()
    torch.save(res, Path(out_dir) / f"{rank}.pt")


def worst_imbalance(per_rank: list[list[int]]) -> tuple[float, float]:
    """(worst, mean) over MoE layers of max / mean rows received per rank."""
    ratios = []
    for layer in zip(*per_rank, strict=True):
        mean = sum(layer) / len(layer)
        ratios.append(max(layer) / mean)
    return max(ratios), sum(ratios) / len(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--decode", type=int, default=16)
    p.add_argument("--redundant", type=int, default=4)
    args = p.parse_args()
    from fathom.worker.demo import demo_checkpoint_dir

    path = str(demo_checkpoint_dir())
    with tempfile.TemporaryDirectory() as out, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(rank_main, args=(port, path, args, out), nprocs=W, join=True)
        res = [torch.load(Path(out) / f"{r}.pt") for r in range(W)]
    tokens_prefill = args.requests * args.prompt
    tokens = tokens_prefill + args.requests * (args.decode - 1)  # tokens through the model
    layers, H, elem = res[0]["moe_layers"], res[0]["hidden"], 4
    a_bytes = W * 2 * (W - 1) / W * H * elem  # per token per MoE layer, all ranks: ring all-reduce
    remote = sum(r["b_remote_rows"] for r in res)
    b_bytes = remote * (2 * H * elem + 8) / (tokens * layers)  # rows out and back + their slot ids
    b_bytes += W * (W - 1) * 8 * args.decode / tokens  # each forward's counts exchange (Long[W] per rank)
    a_s, b_s = max(r["a_s"] for r in res), max(r["b_s"] for r in res)
    gen = args.requests * args.decode
    print(f"{args.requests} requests x ({args.prompt} prompt + {args.decode} generated) tokens, W = {W}, float32")
    print(f"{'layout':<28}{'gen tok/s':>10}{'bytes/token/MoE layer':>24}{'KV bytes/rank':>15}")
    print(f"{'(a) TP=4 EP=4 all-reduce':<28}{gen / a_s:>10.1f}{a_bytes:>24.0f}{res[0]['a_kv']:>15}")
    print(f"{'(b) D=4 EP=4 all-to-all':<28}{gen / b_s:>10.1f}{b_bytes:>24.0f}{max(r['b_kv'] for r in res):>15}")
    print(f"ratio (b)/(a): throughput {a_s / b_s:.2f}x, bytes {b_bytes / a_bytes:.2f}x, "
          f"KV per rank {max(r['b_kv'] for r in res) / res[0]['a_kv']:.2f}x")  # fmt: skip
    before = worst_imbalance([r["c_before"] for r in res])
    after = worst_imbalance([r["c_after"] for r in res])
    print(f"(c) EPLB, skewed trace, {args.redundant} redundant experts: tokens per rank per MoE layer max/mean "
          f"worst layer {before[0]:.2f} -> {after[0]:.2f} (mean over layers {before[1]:.2f} -> {after[1]:.2f}); "
          f"predicted by the placement {res[0]['c_predicted'][0]:.2f} -> {res[0]['c_predicted'][1]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
