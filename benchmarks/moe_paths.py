"""One MoE layer at decode batch sizes, each way of running its routed experts side by side in one
process on one thread: dense (every local expert on every token: the small-batch path before the
grouped GEMM), per-expert (tokens sorted by expert, a Python loop of GEMMs: the general path before,
now the fallback where torch has no grouped GEMM) and grouped (the same sorted tokens, two
``F.grouped_mm`` calls over the stacked weights).

The layer is DeepSeek-V3-style (noaux_tc gate, ``--experts`` routed experts in 4 groups of which
2 are kept, top-``--top-k``, one shared expert; random weights, float32). Every path runs on the
same tokens (outputs checked equal first); rounds interleave the paths. Printed: CPU
milliseconds per MoE forward (gate, routed and shared experts), best of the rounds (on a shared
machine CPU time and the best round move least with load), ratios to the grouped path, and the
path the layer picks on its own ("auto").
Usage: PYTHONPATH=platform python benchmarks/moe_paths.py [--experts 32 --top-k 4 --hidden 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from fathom.model.config import DeepseekConfig
from fathom.model.layers import moe as moe_module
from fathom.model.layers.moe import MoE
from fathom.parallel.context import ParallelContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers: support.*
from support.model_testing import tiny_v3_kwargs

PATHS = ("dense", "per-expert", "grouped")


def build(args: argparse.Namespace) -> MoE:
    kw = tiny_v3_kwargs(hidden_size=args.hidden, moe_intermediate_size=args.inter,
                        n_routed_experts=args.experts, num_experts_per_tok=args.top_k)  # fmt: skip
    config = DeepseekConfig.from_dict({"model_type": "deepseek_v3", **kw})
    moe = MoE(config, ParallelContext.single(), torch.float32)
    g = torch.Generator().manual_seed(0)
    for p in moe.parameters():
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return moe


@contextmanager
def forced(moe: MoE, path: str | None):
    """Run ``moe`` on ``path`` inside the block (None: the layer's own choice)."""
    limit, runs = moe.experts.dense_limit, moe_module.grouped_mm_runs
    if path is not None:
        moe.experts.dense_limit = 10**9 if path == "dense" else 0
    if path == "per-expert":
        moe_module.grouped_mm_runs = lambda *a: False
    try:
        yield
    finally:
        moe.experts.dense_limit, moe_module.grouped_mm_runs = limit, runs


def ms_per_forward(moe: MoE, x: torch.Tensor, reps: int) -> float:
    """CPU milliseconds per forward of ``moe`` on x."""
    moe(x)  # warm-up
    t0 = time.process_time()
    for _ in range(reps):
        moe(x)
    return 1e3 * (time.process_time() - t0) / reps


def auto_path(moe: MoE, x: torch.Tensor) -> str:
    dense = x.shape[0] * len(moe.experts.local) <= moe.experts.dense_limit
    return (
        "dense" if dense else "grouped" if moe_module.grouped_mm_runs(x, moe.experts.inter) else "per-expert"
    )


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=128, help="moe_intermediate_size")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    moe = build(args)
    x_all = torch.randn(max(args.tokens), args.hidden, generator=torch.Generator().manual_seed(1))
    print(f"E={args.experts} top-{args.top_k} H={args.hidden} I={args.inter} float32, 1 thread; "
          f"CPU ms per MoE forward, best of {args.rounds} rounds x {args.reps}")  # fmt: skip
    print(f"{'T':>3} {'T*k/E':>6} {'dense':>8} {'per-expert':>10} {'grouped':>8} {'dense/grouped':>14} "
          f"{'per-expert/grouped':>19} {'auto':>10}")  # fmt: skip
    for t in args.tokens:
        x, out, ms = x_all[:t], {}, {p: [] for p in PATHS}
        for path in PATHS:
            with forced(moe, path):
                out[path] = moe(x)
        assert all(torch.allclose(out[p], out["grouped"], atol=1e-5, rtol=1e-5) for p in PATHS)
        for _ in range(args.rounds):
            for path in PATHS:
                with forced(moe, path):
                    ms[path].append(ms_per_forward(moe, x, args.reps))
        m = {p: min(v) for p, v in ms.items()}
        print(f"{t:>3} {t * args.top_k / args.experts:>6.2f} {m['dense']:>8.3f} {m['per-expert']:>10.3f} "
              f"{m['grouped']:>8.3f} {m['dense'] / m['grouped']:>14.2f} "
              f"{m['per-expert'] / m['grouped']:>19.2f} {auto_path(moe, x):>10}")  # fmt: skip


if __name__ == "__main__":
    main()
