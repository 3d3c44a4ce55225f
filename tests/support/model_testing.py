"""Helpers for tests and benchmarks: tiny reference checkpoints saved by Hugging Face transformers,
and whole-sequence / token-by-token runs of a Fathom model over a temporary paged cache.

``transformers`` (a dev dependency) is imported lazily, only by the reference helpers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from fathom.model.attention_metadata import AttentionMetadata, contiguous_layout
from fathom.model.deepseek import DeepseekForCausalLM
from fathom.model.kv_cache import allocate_kv_caches

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.8, "mscale_all_dim": 0.6, "rope_theta": 10000.0}  # fmt: skip


def tiny_v3_kwargs(**overrides: Any) -> dict[str, Any]:
    """A small DeepSeek-V3 (sigmoid, noaux_tc, q_lora, YaRN) that splits over 4 ranks and EP 2."""
    kw = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 8,
        "num_experts_per_tok": 3,
        "n_group": 4,
        "topk_group": 2,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 32,
        "q_lora_rank": 48,
        "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 16,
        "v_head_dim": 24,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "rope_parameters": dict(YARN),
        "max_position_embeddings": 128,
        "rope_interleave": True,
    }
    kw.update(overrides)
    return kw


def tiny_v2_kwargs(**overrides: Any) -> dict[str, Any]:
    """A small V2-Lite-style model: softmax gate, q_lora_rank=None, group-limited greedy."""
    kw = tiny_v3_kwargs(q_lora_rank=None, topk_method="group_limited_greedy", routed_scaling_factor=1.5,
                        norm_topk_prob=False)  # fmt: skip
    kw.pop("rope_interleave")
    kw.update(overrides)
    return kw


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every weight at a scale where logits spread widely (greedy steps are not near-ties)
    and routing is decisive: linear weights ~ N(0, 1/in), embeddings ~ N(0, 1), norms ~ 1 ± 0.2,
    gate correction biases ~ N(0, 0.05^2) (nonzero)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif name == "lm_head.weight":
            p.copy_(torch.randn(p.shape, generator=g) * 3 / math.sqrt(p.shape[-1]))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.05)


def save_reference(path: str | Path, kind: str = "v3", seed: int = 0, **overrides: Any):
    """Build a random transformers DeepSeek-V3 (``kind='v3'``) or V2 (``'v2'``) model, save it with
    ``save_pretrained`` into ``path``, and return it (float32, eval mode)."""
    import transformers as tf

    if kind == "v3":
        model = tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(**tiny_v3_kwargs(**overrides)))
    elif kind == "v2":
        model = tf.DeepseekV2ForCausalLM(tf.DeepseekV2Config(**tiny_v2_kwargs(**overrides)))
    else:
        raise ValueError(f"kind must be 'v3' or 'v2', got {kind!r}")
    randomize_(model, seed)
    model.eval()
    model.save_pretrained(str(path))
    return model


@torch.no_grad()
def reference_logits(hf_model, ids: list[int]) -> torch.Tensor:
    """transformers' float32 logits [T, vocab] for one sequence."""
    return hf_model(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def reference_greedy(hf_model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens by re-running the full sequence each step (no cache: the plainest reference)."""
    seq = list(ids)
    for _ in range(n):
        seq.append(int(reference_logits(hf_model, seq)[-1].argmax()))
    return seq[len(ids) :]


def full_logits(model: DeepseekForCausalLM, seqs: list[list[int]], block_size: int = 4,
                kv_dtype: torch.dtype | None = None) -> list[torch.Tensor]:  # fmt: skip
    """Prefill every sequence of ``seqs`` in one batch over a fresh paged cache (of ``kv_dtype``,
    default the model's) -> logits [T_i, vocab]."""
    lens = [len(s) for s in seqs]
    tables, n_blocks = contiguous_layout(lens, block_size)
    caches = allocate_kv_caches(model.config, n_blocks, block_size, kv_dtype or model.dtype, model.ctx.device)
    meta = AttentionMetadata.build(lens, lens, tables, block_size, model.ctx.device)
    ids = torch.tensor([t for s in seqs for t in s], device=model.ctx.device)
    logits = model.compute_logits(model(ids, meta.positions(), caches, meta))
    return list(logits.split(lens))


def greedy_decode(model: DeepseekForCausalLM, prompts: list[list[int]], n: int,
                  block_size: int = 4, kv_dtype: torch.dtype | None = None) -> list[list[int]]:  # fmt: skip
    """Prefill all prompts in one batch, then decode n tokens per prompt one step at a time (q_i = 1)
    over the paged cache (of ``kv_dtype``, default the model's), all sequences batched; each
    sequence's blocks are scattered (reversed)."""
    total = [len(p) + n for p in prompts]
    tables, n_blocks = contiguous_layout(total, block_size)
    tables = [list(reversed(t)) for t in tables]
    caches = allocate_kv_caches(model.config, n_blocks, block_size, kv_dtype or model.dtype, model.ctx.device)
    dev = model.ctx.device
    seqs = [list(p) for p in prompts]
    q_lens = [len(p) for p in prompts]
    for _ in range(n):
        s_lens = [len(s) for s in seqs]
        meta = AttentionMetadata.build(q_lens, s_lens, tables, block_size, dev)
        ids = torch.tensor(
            [t for s, q in zip(seqs, q_lens, strict=True) for t in s[len(s) - q :]], device=dev
        )
        hidden = model(ids, meta.positions(), caches, meta)
        last = meta.query_start_loc[1:] - 1
        nxt = model.compute_logits(hidden[last]).argmax(dim=-1).tolist()
        for s, t in zip(seqs, nxt, strict=True):
            s.append(int(t))
        q_lens = [1] * len(seqs)
    return [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)]


def tolerance(reference: torch.Tensor) -> float:
    """The acceptance bound: 1e-4 × max(1, max |logit|)."""
    return 1e-4 * max(1.0, float(reference.abs().max()))


FP8_SKIP = ("embed_tokens", "lm_head", "norm", "layernorm", "mlp.gate.")


def quantize_checkpoint(src: str | Path, dst: str | Path, dequantised_dst: str | Path) -> None:
    """Copy checkpoint ``src`` to ``dst`` with every projection weight quantised to float8_e4m3fn
    with 128×128 ``weight_scale_inv`` blocks (as DeepSeek-V3 publishes), and write the float32
    dequantised weights as a plain checkpoint to ``dequantised_dst`` (for the reference model)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from fathom.model.weights import fp8

    src, dst, deq_dst = Path(src), Path(dst), Path(dequantised_dst)
    for d in (dst, deq_dst):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", deq_dst / "config.json")
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128]}  # fmt: skip
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    tensors, out, dequantised = load_file(src / "model.safetensors"), {}, {}
    for name, t in tensors.items():
        if t.dim() == 2 and not any(s in name for s in FP8_SKIP):
            q, scale = fp8.quantize(t)
            out[name], out[name + "_scale_inv"] = q, scale
            dequantised[name] = fp8.dequantize(q, scale, (0, t.shape[0]), (0, t.shape[1]), torch.float32)
        else:
            out[name] = dequantised[name] = t
    save_file(out, str(dst / "model.safetensors"))
    save_file(dequantised, str(deq_dst / "model.safetensors"))


def load_reference(path: str | Path):
    """A saved checkpoint loaded by transformers (float32, eval mode)."""
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def run_rank(rank: int, world_size: int, ep_size: int, port: int, jobs: list[dict], out_dir: str) -> None:
    """One rank of a sharded check (a ``torch.multiprocessing.spawn`` target): join a gloo group,
    load each job's checkpoint, and save what it computed to ``out_dir/<rank>.pt``.

    A job is {"path", "prompts", "decode": n}; results per job: full-sequence logits in the expanded
    and absorbed forms, n greedy tokens per prompt decoded over the paged cache, the logits and
    greedy tokens again with the small-batch paths off ("grouped", "greedy_general"), the number of
    parameters this rank holds per kind (routed experts, head-split attention projections).
    """
    from fathom.model.loader import load_model
    from fathom.parallel.context import destroy_parallel, init_parallel

    torch.set_num_threads(1)
    ctx = init_parallel(rank, world_size, ep_size, master_port=port, device="cpu", timeout_s=60)
    results = []
    try:
        for job in jobs:
            model = load_model(job["path"], ctx)
            res = {"params": param_counts(model), "experts": local_expert_ids(model)}
            for mode in ("expand", "absorb"):
                model.set_attention_mode(mode)
                res[mode] = full_logits(model, job["prompts"], block_size=4)
            model.set_attention_mode("auto")
            res["greedy"] = greedy_decode(model, job["prompts"], job["decode"], block_size=3)
            model.set_fast_paths(batch_decode=False, moe_dense_limit=0)  # the general paths
            res["grouped"] = full_logits(model, job["prompts"], block_size=4)
            res["greedy_general"] = greedy_decode(model, job["prompts"], job["decode"], block_size=3)
            results.append(res)
    finally:
        destroy_parallel()
    torch.save({"jobs": results}, Path(out_dir) / f"{rank}.pt")


def param_counts(model: DeepseekForCausalLM) -> dict[str, int]:
    """Parameters held by this rank: routed experts, the head-split attention projections, and how
    many of all are FP8-resident."""
    counts = {"routed_experts": 0, "attention_heads": 0, "total": 0, "fp8": 0}
    for name, p in model.named_parameters():
        counts["total"] += p.numel()
        counts["fp8"] += p.numel() if p.dtype == torch.float8_e4m3fn else 0
        if ".mlp.experts." in name:
            counts["routed_experts"] += p.numel()
        elif any(s in name for s in ("q_proj", "q_b_proj", "kv_b_proj", "o_proj")):
            counts["attention_heads"] += p.numel()
    return counts


def local_expert_ids(model: DeepseekForCausalLM) -> list[int]:
    """Global ids of the routed experts this rank holds (same for every MoE layer)."""
    for layer in model.model.layers:
        if hasattr(layer.mlp, "experts"):
            return list(layer.mlp.experts.local)
    return []


@torch.no_grad()
def add_mtp_layer(path: str | Path, seed: int = 1, predictable: float | None = None,
                  own_embedding: bool = True) -> None:  # fmt: skip
    """Append a random MTP module (DeepSeek-V3's layout, ``fathom.model.mtp``) to the checkpoint
    saved in ``path`` as layer ``num_hidden_layers``, and set ``num_nextn_predict_layers`` = 1.

    Its decoder block has the tensors (names, shapes) of the last decoder layer, re-drawn with
    ``randomize_``'s scales. ``predictable=eps`` makes drafts mostly right, to exercise acceptance:
    the target's attention and MLP outputs are scaled by eps (so it is nearly a bigram model,
    next token ≈ f(this token)) and the MTP module computes f of its input token (eh_proj takes
    enorm(embedding) only, its block's outputs are scaled by eps, its head and norm are the
    target's)."""
    import json

    from safetensors.torch import load_file, save_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    tensors = load_file(path / "model.safetensors")
    n_layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    last, mtp = f"model.layers.{n_layers - 1}.", f"model.layers.{n_layers}."
    g = torch.Generator().manual_seed(seed)
    new = {mtp + name[len(last):]: _redraw(name, t, g) for name, t in tensors.items() if name.startswith(last)}
    new[mtp + "enorm.weight"] = 1 + 0.2 * torch.randn(hidden, generator=g)
    new[mtp + "hnorm.weight"] = 1 + 0.2 * torch.randn(hidden, generator=g)
    new[mtp + "eh_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=g) / math.sqrt(2 * hidden)
    new[mtp + "shared_head.norm.weight"] = 1 + 0.2 * torch.randn(hidden, generator=g)
    new[mtp + "shared_head.head.weight"] = _redraw("lm_head.weight", tensors["lm_head.weight"], g)
    if own_embedding:
        new[mtp + "embed_tokens.weight"] = torch.randn(tensors["model.embed_tokens.weight"].shape, generator=g)
    if predictable is not None:
        _make_predictable(tensors, new, mtp, hidden, predictable)
    tensors.update(new)
    save_file(tensors, str(path / "model.safetensors"))
    config["num_nextn_predict_layers"] = 1
    (path / "config.json").write_text(json.dumps(config, indent=2))


def _redraw(name: str, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A fresh tensor like ``t`` at ``randomize_``'s scale for a parameter called ``name``."""
    if name.endswith("norm.weight") or "layernorm" in name:
        return 1 + 0.2 * torch.randn(t.shape, generator=g)
    if name.endswith("e_score_correction_bias"):
        return torch.randn(t.shape, generator=g) * 0.05
    if name == "lm_head.weight":
        return torch.randn(t.shape, generator=g) * 3 / math.sqrt(t.shape[-1])
    return torch.randn(t.shape, generator=g) / math.sqrt(t.shape[-1])


def _make_predictable(target: dict, mtp_tensors: dict, mtp: str, hidden: int, eps: float) -> None:
    outputs = ("self_attn.o_proj.weight", "down_proj.weight")
    for tensors in (target, mtp_tensors):
        for name in tensors:
            if name.startswith("model.layers.") and name.endswith(outputs):
                tensors[name] = tensors[name] * eps
    mtp_tensors[mtp + "eh_proj.weight"] = torch.cat([torch.eye(hidden), torch.zeros(hidden, hidden)], dim=1)
    mtp_tensors[mtp + "enorm.weight"] = torch.ones(hidden)
    mtp_tensors[mtp + "shared_head.norm.weight"] = target["model.norm.weight"].clone()
    mtp_tensors[mtp + "shared_head.head.weight"] = target["lm_head.weight"].clone()
    mtp_tensors[mtp + "embed_tokens.weight"] = target["model.embed_tokens.weight"].clone()


def save_mtp_checkpoint(path: str | Path, seed: int = 0, predictable: float | None = None, **overrides: Any) -> Path:
    """A random V3 checkpoint (``save_reference``) with an MTP module (``add_mtp_layer``)."""
    save_reference(path, "v3", seed=seed, **overrides)
    add_mtp_layer(path, seed=seed + 1, predictable=predictable)
    return Path(path)
