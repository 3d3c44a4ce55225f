"""Fathom vs transformers on the same checkpoint (the demo model unless --model), side by side:
prefill of a batch of prompts, then greedy decode of N tokens per prompt (transformers with its
KV cache via ``generate``; Fathom over its paged latent cache, all sequences batched per step).
Prints times and the ratio. Usage: PYTHONPATH=platform python benchmarks/bench_model_vs_transformers.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from fathom.model.loader import load_model
from fathom.worker.demo import demo_checkpoint_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers: support.*
from support import model_testing as T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    path = args.model or str(demo_checkpoint_dir())
    ours, hf = load_model(path), T.load_reference(path)
    g = torch.Generator().manual_seed(0)
    vocab = ours.config.vocab_size
    prompts = [torch.randint(0, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)]

    t0 = time.perf_counter()
    fathom_out = T.greedy_decode(ours, prompts, args.new_tokens, block_size=16)
    t_fathom = time.perf_counter() - t0

    t0 = time.perf_counter()
    hf.generation_config.eos_token_id = None  # decode exactly N tokens, like Fathom here (no stop)
    with torch.no_grad():
        hf_out = hf.generate(
            torch.tensor(prompts), max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0
        )
    t_hf = time.perf_counter() - t0
    gen = hf_out[:, args.prompt_len :].tolist()
    reference = [T.reference_greedy(hf, p, args.new_tokens) for p in prompts]  # full forward per step
    print(f"batch {args.batch} × ({args.prompt_len} prompt + {args.new_tokens} new tokens), {path}")
    print(
        f"transformers generate: {t_hf:.2f} s   fathom: {t_fathom:.2f} s   ratio (hf / fathom): {t_hf / t_fathom:.2f}"
    )
    print(
        f"fathom == transformers step-by-step forward: {sum(map(list.__eq__, fathom_out, reference))}/{args.batch}"
    )
    print(
        f"transformers generate == its own step-by-step forward: {sum(map(list.__eq__, gen, reference))}/{args.batch}"
    )


if __name__ == "__main__":
    main()
