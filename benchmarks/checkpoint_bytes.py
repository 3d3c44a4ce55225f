"""Bytes a DeepSeek-V3 pod reads at start, with and without a model cache (no download needed).

    python benchmarks/checkpoint_bytes.py [--tp 8 --ep 8 --gpus-per-node 8]

The checkpoint's tensors (names, shapes, dtypes) are rebuilt from DeepSeek-V3's published
config.json (FP8 e4m3 linear weights with fp32 128x128 block scales; embeddings, norms and the
router in BF16/FP32; layer 61 is the multi-token-prediction module). Each rank's reads are what
`fathom.model.weights.sharding.plan` assigns it, with the scale blocks its slices touch; a pod
holds `gpus-per-node` ranks and reads a tensor that several of its ranks need once (the page
cache serves the others). Printed: the checkpoint, per rank, per pod, and per pod start the bytes
fetched over the network and written to the pod's volume under each `spec.model` choice.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform")]

from fathom.model.weights.fp8 import block_range
from fathom.model.weights.sharding import Layout, shard_for

V3 = {"vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
      "num_hidden_layers": 61, "num_nextn_predict_layers": 1, "first_k_dense_replace": 3,
      "n_routed_experts": 256, "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
FP8, BF16, FP32 = 1, 2, 4
GB = 1e9


def tensors(c: dict = V3) -> list[tuple[str, tuple[int, int] | tuple[int], int]]:
    """(name, shape, bytes per element) of every weight in the checkpoint (scales not listed)."""
    h, heads, qk = c["hidden_size"], c["num_attention_heads"], c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    out = [("model.embed_tokens.weight", (c["vocab_size"], h), BF16), ("lm_head.weight", (c["vocab_size"], h), BF16),
           ("model.norm.weight", (h,), BF16)]
    for layer in range(c["num_hidden_layers"] + c["num_nextn_predict_layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "input_layernorm.weight", (h,), BF16), (p + "post_attention_layernorm.weight", (h,), BF16),
                (p + "self_attn.q_a_proj.weight", (c["q_lora_rank"], h), FP8),
                (p + "self_attn.q_a_layernorm.weight", (c["q_lora_rank"],), BF16),
                (p + "self_attn.q_b_proj.weight", (heads * qk, c["q_lora_rank"]), FP8),
                (p + "self_attn.kv_a_proj_with_mqa.weight", (c["kv_lora_rank"] + c["qk_rope_head_dim"], h), FP8),
                (p + "self_attn.kv_a_layernorm.weight", (c["kv_lora_rank"],), BF16),
                (p + "self_attn.kv_b_proj.weight", (heads * (c["qk_nope_head_dim"] + c["v_head_dim"]),
                                                    c["kv_lora_rank"]), FP8),
                (p + "self_attn.o_proj.weight", (h, heads * c["v_head_dim"]), FP8)]
        if layer < c["first_k_dense_replace"]:
            out += _mlp(p + "mlp.", h, c["intermediate_size"])
            continue
        out += [(p + "mlp.gate.weight", (c["n_routed_experts"], h), BF16),
                (p + "mlp.gate.e_score_correction_bias", (c["n_routed_experts"],), FP32)]
        out += _mlp(p + "mlp.shared_experts.", h, c["moe_intermediate_size"])
        for e in range(c["n_routed_experts"]):
            out += _mlp(p + f"mlp.experts.{e}.", h, c["moe_intermediate_size"])
        if layer >= c["num_hidden_layers"]:  # the MTP module's own pieces
            out += [(p + "embed_tokens.weight", (c["vocab_size"], h), BF16), (p + "enorm.weight", (h,), BF16),
                    (p + "hnorm.weight", (h,), BF16), (p + "eh_proj.weight", (h, 2 * h), BF16),
                    (p + "shared_head.norm.weight", (h,), BF16),
                    (p + "shared_head.head.weight", (c["vocab_size"], h), BF16)]
    return out


def _mlp(p: str, h: int, inter: int) -> list:
    return [(p + "gate_proj.weight", (inter, h), FP8), (p + "up_proj.weight", (inter, h), FP8),
            (p + "down_proj.weight", (h, inter), FP8)]


def slice_bytes(shape: tuple, itemsize: int, dim: int | None, start: int, stop: int | None) -> int:
    """Bytes of rows/cols [start, stop) along `dim`, plus the FP8 scale blocks they touch."""
    full = list(shape)
    if dim is not None:
        full[dim] = (stop if stop is not None else shape[dim]) - start
    n = 1
    for d in full:
        n *= d
    if itemsize != FP8:
        return n * itemsize
    rows = (start, stop) if dim == 0 else (0, shape[0])
    cols = (start, stop) if dim == 1 else (0, shape[1])
    r0, r1 = block_range(*rows)
    c0, c1 = block_range(*cols)
    return n + (r1 - r0) * (c1 - c0) * FP32


def reads(layout: Layout, weights: list) -> dict[tuple, int]:
    """(checkpoint tensor, dim, start, stop) -> bytes this rank reads of it (with its scale blocks)."""
    out = {}
    for name, shape, size in weights:
        for shard in shard_for(name, shape, layout):
            out[(name, shard.dim, shard.start, shard.stop)] = slice_bytes(shape, size, shard.dim, shard.start, shard.stop)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--ep", type=int, default=8)
    p.add_argument("--gpus-per-node", type=int, default=8)
    args = p.parse_args(argv)
    weights = tensors()
    total = sum(slice_bytes(shape, size, None, 0, None) for _, shape, size in weights)
    ranks = [reads(Layout(r, args.tp, args.ep, V3["n_routed_experts"], V3["num_hidden_layers"], V3["vocab_size"]),
                   weights) for r in range(args.tp)]
    per_pod = args.gpus_per_node
    pods = [ranks[i:i + per_pod] for i in range(0, args.tp, per_pod)]
    pod_bytes = [sum({k: v for r in pod for k, v in r.items()}.values()) for pod in pods]  # distinct slices
    print(f"DeepSeek-V3 checkpoint: {total / GB:.1f} GB; TP{args.tp}/EP{args.ep}, {per_pod} ranks per pod, "
          f"{len(pods)} pod(s) per instance")
    print(f"  one rank reads {min(sum(r.values()) for r in ranks) / GB:.1f}-{max(sum(r.values()) for r in ranks) / GB:.1f} GB "
          f"of it; one pod reads {max(pod_bytes) / GB:.1f} GB (its ranks' slices, each tensor once)")
    print("  per pod start       network fetch   written to the pod's volume   read by the ranks")
    rows = [("uri, emptyDir (before)", total, total, max(pod_bytes)),
            ("uri, node cache, cold", total, total, max(pod_bytes)),
            ("uri, node cache, warm", 0, 0, max(pod_bytes)),
            ("uri, shared cache (PVC)", max(pod_bytes), 0, max(pod_bytes))]
    for name, net, written, read in rows:
        print(f"  {name:<26}{net / GB:>9.1f} GB{written / GB:>22.1f} GB{read / GB:>20.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
