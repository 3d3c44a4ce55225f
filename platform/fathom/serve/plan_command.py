"""`fathom plan`: will this model fit these GPUs? (also `fathom serve --dry-run`).

    fathom plan --model DIR|config.json --gpu h200 --num-gpus 8 [--tensor-parallel-size 8]
                [--expert-parallel-size 1] [--quantization auto|fp8|none] [--kv-cache-dtype auto|fp8]
                [--max-model-len N] [--output text|json]

Builds every rank of one instance on the meta device from the config alone, with the loader's own
format decisions (``fathom.model.memory``), and prints per rank the weight bytes by kind, the KV
bytes per token, how many tokens of KV fit in the KV fraction of what the weights leave of the GPU,
and whether the instance fits (``fathom.api.memory_plan``). Exit status 0 when it fits, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from fathom.api.engine import EngineSettings
from fathom.api.memory_plan import GIB, GPUS, KINDS, KvCacheDType, MemoryPlan, Quantization, gpu_spec


def add_plan_parser(sub) -> None:
    """The `plan` subcommand on the `fathom` parser's subparsers."""
    p = sub.add_parser("plan", help="Show whether a model fits its GPUs: weights, KV bytes and KV capacity per rank.",
                       description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--model", default=None, help="Checkpoint directory or its config.json (default: the demo model).")
    p.add_argument("--gpu", default="h200", help=f"GPU kind: {', '.join(GPUS)} (memory from the built-in table).")
    p.add_argument("--gpu-memory-gib", type=float, default=None, help="GPU memory in GiB (overrides the table).")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs available (default: the tensor-parallel size).")
    p.add_argument("--tensor-parallel-size", type=int, default=None, help="Ranks of one instance (default: --num-gpus).")
    p.add_argument("--expert-parallel-size", type=int, default=1, help="Expert shards; must divide the TP size.")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="Dtype of the tensors that are not FP8.")
    p.add_argument("--quantization", choices=get_args(Quantization), default="auto",
                   help="auto: as the checkpoint; fp8: quantise projections at load; none: dequantise FP8.")
    p.add_argument("--kv-cache-dtype", choices=get_args(KvCacheDType), default="auto", help="Latent KV cache dtype.")
    p.add_argument("--max-model-len", type=int, default=None, help="Default: the config's max_position_embeddings.")
    p.add_argument("--kv-cache-memory-fraction", type=float, default=0.9,
                   help="Fraction of the memory the weights leave that the KV cache takes.")
    p.add_argument("--block-size", type=int, default=16, help="Tokens per KV-cache block.")
    p.add_argument("--reserved-memory-gib", type=float, default=2.0,
                   help="Per-GPU allowance for the CUDA context, communication buffers and activations.")
    p.add_argument("--output", choices=["text", "json"], default="text")


def run_plan(args: argparse.Namespace) -> int:
    """`fathom plan`: 0 when the instance fits, 1 when not, 2 on bad input."""
    tp = args.tensor_parallel_size or args.num_gpus or 1
    try:
        engine = EngineSettings(model=args.model, tensor_parallel_size=tp, expert_parallel_size=args.expert_parallel_size,
                                dtype=args.dtype, quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
                                max_model_len=args.max_model_len, block_size=args.block_size,
                                kv_cache_memory_fraction=args.kv_cache_memory_fraction)  # fmt: skip
        gpu = gpu_spec(args.gpu, args.gpu_memory_gib)
        plan, title = make_plan(engine, gpu, args.num_gpus or tp, int(args.reserved_memory_gib * GIB))
    except ValidationError as e:
        print(f"fathom plan: error: {e.errors()[0]['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"fathom plan: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"model": title, **plan.to_dict()}, indent=2) if args.output == "json" else render(plan, title))
    return 0 if plan.fits else 1


def make_plan(engine: EngineSettings, gpu, num_gpus: int, reserved_bytes: int) -> tuple[MemoryPlan, str]:
    """(the plan of one instance of `engine` on `num_gpus` of `gpu`, a one-line model title)."""
    from fathom.api.memory_plan import ModelShape, plan_memory
    from fathom.model.config import DeepseekConfig
    from fathom.model.memory import rank_weight_bytes

    source = engine.model
    if source is None:
        from fathom.worker.demo_model import demo_model_dir

        source = demo_model_dir()
    config = DeepseekConfig.from_pretrained(source)
    dtype = engine.dtype if engine.dtype != "auto" else "bfloat16"
    tp, ep, dp, redundant = (engine.tensor_parallel_size, engine.moe_ep_size, engine.data_parallel_size,
                             engine.eplb.num_redundant_experts)  # fmt: skip
    weights = rank_weight_bytes(config, tp, ep, dtype, engine.quantization, dp, redundant)
    shape = ModelShape.from_config(config.model_dump())
    plan = plan_memory(shape, gpu, num_gpus=num_gpus, tp=tp, ep=ep, dtype=dtype, quantization=engine.quantization,
                       kv_cache_dtype=engine.kv_cache_dtype, max_model_len=engine.max_model_len,
                       memory_fraction=engine.kv_cache_memory_fraction, block_size=engine.block_size,
                       reserved_bytes=reserved_bytes, weights=weights, dp=dp, redundant=redundant)  # fmt: skip
    path = Path(source)
    name = (path if path.is_dir() else path.parent).name
    experts = f", {config.n_routed_experts} routed experts" if config.n_routed_experts else ""
    title = (f"{name} ({config.model_type}, {config.num_hidden_layers} layers{experts}, "
             f"{'FP8' if config.fp8 else 'unquantised'} checkpoint)")  # fmt: skip
    return plan, title


def render(plan: MemoryPlan, title: str) -> str:
    """The plan as a table: GiB by kind, one row per group of identical ranks."""
    weights = ("FP8-resident projections (1 byte + float32 block scales), other tensors " + plan.dtype
               if plan.fp8_weights else f"all tensors {plan.dtype}")  # fmt: skip
    lines = [title,
             (f"{plan.num_gpus} x {plan.gpu.name} ({plan.gpu.memory_bytes / GIB:.1f} GiB each), "
              f"{f'DP {plan.dp} x ' if plan.dp > 1 else ''}TP {plan.tp}, EP {plan.ep}: {plan.replicas} instance(s)"),
             f"weights: {weights}", "",
             "GiB per rank  " + "".join(f"{k:>17}" for k in (*KINDS, "total", "KV budget"))]  # fmt: skip
    for ranks, r in _groups(plan):
        cells = [*(r.weights[k] for k in KINDS), r.weight_bytes, r.kv_budget]
        lines.append(f"{ranks:<14}" + "".join(f"{v / GIB:>17.2f}" for v in cells))
    kv = "fp8 (e4m3)" if plan.kv_cache_dtype == "fp8" else plan.dtype
    where = "every rank of its attention group" if plan.dp > 1 else "every rank"
    per = f"per attention group ({plan.dp} groups)" if plan.dp > 1 else "per instance"
    lines += ["", f"KV cache ({kv}): {plan.kv_bytes_per_token:,} bytes per token on {where}",
              (f"KV capacity: {plan.kv_tokens:,} tokens {per} ({plan.memory_fraction:g} of what weights and "
               f"{plan.reserved_bytes / GIB:.1f} GiB reserved leave per GPU) = "
               f"{plan.kv_tokens / plan.max_model_len:.1f} x max_model_len {plan.max_model_len:,}"),
              "fits: yes" if plan.fits else "fits: NO - " + "; ".join(plan.problems)]  # fmt: skip
    return "\n".join(lines)


def _groups(plan: MemoryPlan):
    """(label, rank plan) per run of ranks with the same numbers."""
    out: list[tuple[str, object]] = []
    start = 0
    for i, r in enumerate(plan.ranks):
        last = i + 1 == len(plan.ranks)
        if last or (plan.ranks[i + 1].weights, plan.ranks[i + 1].kv_budget) != (r.weights, r.kv_budget):
            out.append((f"rank {start}" if start == i else f"ranks {start}-{i}", r))
            start = i + 1
    return out


def plan_settings(engine: EngineSettings) -> int:
    """`fathom serve --dry-run`: the plan of one instance of these settings on this machine's GPU
    (its total memory), or on H200s when there is none; prints it, 0 when it fits."""
    import torch

    gpu = gpu_spec("h200")
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        gpu = gpu_spec(torch.cuda.get_device_name(0), total / GIB)
    try:
        plan, title = make_plan(engine, gpu, engine.world_size, 2 * GIB)
    except (ValueError, FileNotFoundError) as e:
        print(f"fathom serve --dry-run: error: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        title += " [no GPU here: planned for H200]"
    print(render(plan, title))
    return 0 if plan.fits else 1
