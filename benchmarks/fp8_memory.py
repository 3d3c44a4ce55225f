"""FP8-resident vs dequantised weights, side by side: process RSS after loading the same FP8
checkpoint (>= 200M parameters) each way, in two fresh processes, and the bytes of the loaded
tensors.

The checkpoint is a DeepSeek-V3-architecture model (MLA with q_lora, noaux_tc routing, shared +
routed experts, 1 dense layer first) with random weights, every projection quantised to
float8_e4m3fn with 128x128 ``weight_scale_inv`` blocks as DeepSeek publishes them; embeddings,
LM head, norms and router in bf16. Each child process imports torch, notes its RSS, loads the
checkpoint (``quantization=auto``: FP8-resident; ``none``: dequantised to bf16 at load, what
Fathom did before), runs one prefill of 64 tokens and 8 decode steps over the paged cache, and
reports VmRSS after load, VmHWM (peak) over load + forward, and the CPU time of the forward.

Usage: PYTHONPATH=platform:tests python benchmarks/fp8_memory.py [--dir /tmp/fp8-bench]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helpers: support.*

CONFIG = {
    "model_type": "deepseek_v3", "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
    "moe_intermediate_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8,
    "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2, "n_shared_experts": 1,
    "first_k_dense_replace": 1, "kv_lora_rank": 256, "q_lora_rank": 384, "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128, "v_head_dim": 128, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
    "max_position_embeddings": 4096, "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128]},
}  # fmt: skip


def checkpoint_tensors(c: dict):
    """(name, shape, quantised) of every tensor of a DeepSeek-V3 checkpoint with config ``c``."""
    H, V, heads = c["hidden_size"], c["vocab_size"], c["num_attention_heads"]
    qk, r, rope = c["qk_nope_head_dim"] + c["qk_rope_head_dim"], c["kv_lora_rank"], c["qk_rope_head_dim"]
    yield from (("model.embed_tokens.weight", (V, H), False), ("lm_head.weight", (V, H), False),
                ("model.norm.weight", (H,), False))  # fmt: skip
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield from ((p + "input_layernorm.weight", (H,), False), (p + "post_attention_layernorm.weight", (H,), False))
        a = p + "self_attn."
        yield from ((a + "q_a_proj.weight", (c["q_lora_rank"], H), True),
                    (a + "q_a_layernorm.weight", (c["q_lora_rank"],), False),
                    (a + "q_b_proj.weight", (heads * qk, c["q_lora_rank"]), True),
                    (a + "kv_a_proj_with_mqa.weight", (r + rope, H), True), (a + "kv_a_layernorm.weight", (r,), False),
                    (a + "kv_b_proj.weight", (heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), r), True),
                    (a + "o_proj.weight", (H, heads * c["v_head_dim"]), True))  # fmt: skip
        if i < c["first_k_dense_replace"]:
            yield from _mlp(p + "mlp.", H, c["intermediate_size"])
            continue
        E, inter = c["n_routed_experts"], c["moe_intermediate_size"]
        yield from ((p + "mlp.gate.weight", (E, H), False), (p + "mlp.gate.e_score_correction_bias", (E,), False))
        for e in range(E):
            yield from _mlp(f"{p}mlp.experts.{e}.", H, inter)
        yield from _mlp(p + "mlp.shared_experts.", H, inter * c["n_shared_experts"])


def _mlp(prefix: str, hidden: int, inter: int):
    yield from ((prefix + "gate_proj.weight", (inter, hidden), True), (prefix + "up_proj.weight", (inter, hidden), True),
                (prefix + "down_proj.weight", (hidden, inter), True))  # fmt: skip


def write_checkpoint(path: Path, config: dict = CONFIG) -> int:
    """Random FP8 checkpoint at ``path`` (written once); returns its parameter count."""
    from safetensors.torch import save_file

    from fathom.model.weights import fp8

    specs = list(checkpoint_tensors(config))
    count = sum(math.prod(s) for _, s, _ in specs)
    if (path / "model.safetensors").is_file():
        return count
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape, quantised in specs:
        if name.endswith("correction_bias"):
            tensors[name] = torch.randn(shape, generator=g) * 0.05
        elif len(shape) == 1:
            tensors[name] = (1 + 0.2 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        elif not quantised:
            tensors[name] = torch.randn(shape, generator=g).to(torch.bfloat16)
        else:
            tensors[name], tensors[name + "_scale_inv"] = fp8.quantize(torch.randn(shape, generator=g) / shape[1] ** 0.5)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return count


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(path: str, quantization: str) -> None:
    """Load and run once; print one JSON line of measurements."""
    from fathom.model.loader import load_model
    from support.model_testing import greedy_decode

    torch.set_num_threads(1)
    base = status_kib("VmRSS")
    t0 = time.perf_counter()
    model = load_model(path, dtype=torch.bfloat16, quantization=quantization)
    load_s = time.perf_counter() - t0
    held = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    after_load = status_kib("VmRSS")
    cpu0 = time.process_time()
    prompt = torch.randint(0, CONFIG["vocab_size"], (64,), generator=torch.Generator().manual_seed(1)).tolist()
    greedy_decode(model, [prompt], 8, block_size=16)
    print(json.dumps({"quantization": quantization, "base_kib": base, "after_load_kib": after_load,
                      "peak_kib": status_kib("VmHWM"), "tensor_bytes": held, "load_s": load_s,
                      "forward_cpu_s": time.process_time() - cpu0, "scratch_bytes": model.scratch.nbytes()}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/fathom-fp8-bench")
    ap.add_argument("--child", nargs=2, metavar=("DIR", "QUANTIZATION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    path = Path(args.dir)
    params = write_checkpoint(path)
    stored = (path / "model.safetensors").stat().st_size
    print(f"checkpoint: {params / 1e6:.0f}M parameters, {stored / 2**20:.0f} MiB on disk (FP8 + scales + bf16 rest)")
    runs = {}
    for q in ("auto", "none"):
        out = subprocess.run([sys.executable, __file__, "--child", str(path), q], capture_output=True, text=True,
                             check=True, env={**os.environ})  # fmt: skip
        runs[q] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 1024
    rows = [("resident tensor bytes (MiB)", lambda r: r["tensor_bytes"] / 2**20),
            ("RSS after load - RSS before (MiB)", lambda r: (r["after_load_kib"] - r["base_kib"]) / mib),
            ("RSS after load (MiB)", lambda r: r["after_load_kib"] / mib),
            ("peak RSS, load + forward (MiB)", lambda r: r["peak_kib"] / mib),
            ("dequantisation scratch (MiB)", lambda r: r["scratch_bytes"] / 2**20),
            ("load time (s)", lambda r: r["load_s"]),
            ("prefill 64 + 8 decode steps, CPU s", lambda r: r["forward_cpu_s"])]  # fmt: skip
    print(f"\n| {'':36} | FP8-resident | dequantised (bf16) | FP8 / dequantised |")
    print(f"|{'-' * 38}|-------------:|-------------------:|------------------:|")
    for label, f in rows:
        a, b = f(runs["auto"]), f(runs["none"])
        print(f"| {label:36} | {a:12.1f} | {b:18.1f} | {a / b if b else float('nan'):17.2f} |")
    print(f"\nresident bytes / checkpoint bytes: FP8 {runs['auto']['tensor_bytes'] / stored:.3f}, "
          f"dequantised {runs['none']['tensor_bytes'] / stored:.3f}")


if __name__ == "__main__":
    main()
