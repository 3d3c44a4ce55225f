"""Decode tokens/s on one CUDA GPU with the same FP8 checkpoint held three ways, side by side in one
process: FP8-resident on the block-scaled kernel (torch's F.scaled_mm, SM90), FP8-resident with the
dequantise-into-scratch fallback (``FATHOM_FP8_GEMM=dequantize``), and dequantised to bf16 at load
(``quantization=none``, what Fathom did before). Also prints each one's weight bytes and peak
CUDA memory.

The checkpoint is ``fp8_memory.py``'s random DeepSeek-V3-architecture model scaled by ``--scale``
(hidden size, expert width), written once. A batch of ``--batch`` prompts of ``--prompt`` tokens
is prefilled, then ``--steps`` decode steps are timed (CUDA synchronised), best of ``--rounds``.
Without a CUDA device it says so and exits.

Usage: PYTHONPATH=platform:tests python benchmarks/fp8_decode_gpu.py [--batch 32 --steps 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers: support.*
from fp8_memory import CONFIG, write_checkpoint

MODES = (("fp8 kernel", "auto", None), ("fp8 dequantize", "auto", "dequantize"), ("bf16 weights", "none", None))


def decode_rate(model, batch: int, prompt: int, steps: int, rounds: int) -> float:
    """Best tokens/s over ``rounds`` of ``steps`` batched decode steps after one prefill."""
    from fathom.model.attention_metadata import AttentionMetadata, contiguous_layout
    from fathom.model.kv_cache import allocate_kv_caches

    dev, bs = model.ctx.device, 16
    best = 0.0
    for _ in range(rounds):
        tables, n_blocks = contiguous_layout([prompt + steps] * batch, bs)
        caches = allocate_kv_caches(model.config, n_blocks, bs, model.dtype, dev)
        ids = torch.randint(0, model.config.vocab_size, (batch * prompt,), device=dev)
        meta = AttentionMetadata.build([prompt] * batch, [prompt] * batch, tables, bs, dev)
        hidden = model(ids, meta.positions(), caches, meta)
        nxt = model.compute_logits(hidden[meta.query_start_loc[1:] - 1]).argmax(-1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(steps):
            meta = AttentionMetadata.build([1] * batch, [prompt + s + 1] * batch, tables, bs, dev)
            nxt = model.compute_logits(model(nxt, meta.positions(), caches, meta)).argmax(-1)
        torch.cuda.synchronize()
        best = max(best, batch * steps / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/fathom-fp8-gpu-bench")
    ap.add_argument("--scale", type=int, default=2, help="multiply hidden size and expert width")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("fp8_decode_gpu: needs a CUDA device; nothing measured")
        return
    from fathom.model.loader import load_model
    from fathom.parallel.context import ParallelContext

    config = {**CONFIG, "hidden_size": CONFIG["hidden_size"] * args.scale,
              "moe_intermediate_size": CONFIG["moe_intermediate_size"] * args.scale}  # fmt: skip
    path = Path(args.dir) / f"scale{args.scale}"
    params = write_checkpoint(path, config)
    print(f"{torch.cuda.get_device_name(0)}; checkpoint {params / 1e6:.0f}M parameters; batch {args.batch}, "
          f"prompt {args.prompt}, {args.steps} decode steps, best of {args.rounds}")  # fmt: skip
    rows = []
    for label, quantization, gemm in MODES:
        os.environ.pop("FATHOM_FP8_GEMM", None)
        if gemm:
            os.environ["FATHOM_FP8_GEMM"] = gemm
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = load_model(path, ParallelContext.single("cuda"), torch.bfloat16, quantization=quantization)
        weights = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
        rate = decode_rate(model, args.batch, args.prompt, args.steps, args.rounds)
        rows.append((label, rate, weights, torch.cuda.max_memory_allocated()))
        del model
    base = rows[-1][1]
    print(f"\n| {'weights':16} | decode tok/s | vs bf16 | weight GiB | peak CUDA GiB |")
    print(f"|{'-' * 18}|-------------:|--------:|-----------:|--------------:|")
    for label, rate, weights, peak in rows:
        print(f"| {label:16} | {rate:12.1f} | {rate / base:6.2f}x | {weights / 2**30:10.2f} | {peak / 2**30:13.2f} |")


if __name__ == "__main__":
    main()
