"""The random-weights demo checkpoint: a small DeepSeek-V3-architecture checkpoint with a byte-level
BPE tokenizer, generated deterministically from a seed, for tests and benchmarks that need random
outputs or this shape. (``fathom serve`` with no ``--model`` serves the trained demo model of
``fathom.worker.demo_model``, which shares this tokenizer and chat template.)

It is a real MoE (16 routed experts, top-4 of 2-of-4 groups with noaux_tc routing, a shared expert,
one leading dense layer, YaRN rope) in the published checkpoints' config spelling, about 5 MB
of bfloat16. Weights are drawn at a scale where logits spread widely, so greedy outputs are
stable and depend on the prompt.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from fathom.engine.tokenizer import bytes_to_unicode

DEMO_VERSION = 2  # 2: DeepSeek's tool-call tokens and a chat template that renders tools
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
TOOL_TOKENS = ["<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
               "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
               "<｜tool▁output▁end｜>", "<｜tool▁sep｜>"]  # fmt: skip
SPECIAL_TOKENS = [BOS, EOS, "<think>", "</think>", "<｜User｜>", "<｜Assistant｜>",
                  "<｜place▁holder▁no▁0｜>", "<｜place▁holder▁no▁1｜>", *TOOL_TOKENS]  # fmt: skip
# Frequent English pairs, as byte-level BPE merges ("Ġ" is the space byte).
MERGES = ["Ġt", "he", "in", "er", "an", "Ġa", "on", "re", "Ġs", "at", "en", "nd", "Ġw", "or", "es", "Ġo", "ti", "Ġc", "ed", "is", "it", "ou", "ar", "Ġb", "al", "Ġf", "Ġp", "te", "ng", "Ġm", "le", "st", "Ġd", "as", "ve", "ic", "ro", "me", "Ġh", "se", "ll", "Ġi", "Ġn", "de", "ne", "hi", "ea", "ra", "co", "ce", "li", "ri", "ch", "io", "ly", "ut"]  # fmt: skip

# DeepSeek-V3's chat template, abridged: tools in the system prompt, assistant tool calls and tool
# results in V3's tool-call tokens.
CHAT_TEMPLATE = (
    "{%- if add_generation_prompt is not defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{- bos_token }}"
    "{%- for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{%- if tools %}\n\n## Tools\nYou have access to the following tools:\n"
    "{%- for t in tools %}\n### {{ t['function']['name'] }}\nDescription: {{ t['function']['description'] or '' }}"
    "\n\nParameters: {{ (t['function']['parameters'] or {}) | tojson }}\n{% endfor %}"
    "\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>tool_call_name\n```json\n"
    "tool_call_arguments\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>{% endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' and m['tool_calls'] %}{{ '<｜Assistant｜>' + (m['content'] or '') }}"
    "<｜tool▁calls▁begin｜>{% for c in m['tool_calls'] %}<｜tool▁call▁begin｜>function<｜tool▁sep｜>"
    "{{ c['function']['name'] }}\n```json\n{{ c['function']['arguments'] }}\n```<｜tool▁call▁end｜>"
    "{% endfor %}<｜tool▁calls▁end｜>{{ eos_token }}"
    "{%- elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + eos_token }}"
    "{%- elif m['role'] == 'tool' %}"
    "{%- if loop.previtem is not defined or loop.previtem['role'] != 'tool' %}<｜tool▁outputs▁begin｜>{% endif %}"
    "<｜tool▁output▁begin｜>{{ m['content'] }}<｜tool▁output▁end｜>"
    "{%- if loop.nextitem is not defined or loop.nextitem['role'] != 'tool' %}<｜tool▁outputs▁end｜>{% endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

DEMO_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 256 + len(MERGES) + len(SPECIAL_TOKENS),
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "q_lora_rank": 128,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 512,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 0,
    "bos_token_id": 256 + len(MERGES),
    "eos_token_id": 256 + len(MERGES) + 1,
    "torch_dtype": "bfloat16",
}


def write_tokenizer(path: Path) -> None:
    """tokenizer.json (byte-level BPE: 256 byte tokens, MERGES, special tokens) + tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    for i, m in enumerate(MERGES):
        vocab[m] = 256 + i
    merges = [(m[0], m[1:]) for m in MERGES]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    tok.save(str(path / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": DEMO_CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def checkpoint_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    """(Hugging Face name, shape) of every tensor of ``config``'s model, in the order our W = 1 model
    declares its parameters, a layer's routed experts one after another (gate, up, down)."""
    from fathom.model.deepseek import DeepseekForCausalLM
    from fathom.model.weights.sharding import Layout, sources
    from fathom.parallel.context import ParallelContext

    ctx = ParallelContext.single()
    params = dict(DeepseekForCausalLM(config, ctx).named_parameters())
    layout = Layout(ctx, config.n_routed_experts or 0, config.num_hidden_layers, config.vocab_size)
    out = []
    for ours in params:
        if ours.endswith(".experts.w2"):
            continue  # listed with w13, expert by expert
        slots = sources(ours, layout)
        if ours.endswith(".experts.w13"):
            slots |= sources(ours.removesuffix("w13") + "w2", layout)
        for slot, name in sorted(slots.items(), key=lambda s: s[0].index or 0):  # stable: w13 before w2
            out.append((name, tuple(slot.view(params[slot.name]).shape)))
    return out


def demo_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random weights for DEMO_CONFIG, by Hugging Face tensor name."""
    from fathom.model.config import DeepseekConfig

    g = torch.Generator().manual_seed(seed)
    g_tools = torch.Generator().manual_seed(seed + 1)  # rows of TOOL_TOKENS, drawn apart so that
    out: dict[str, torch.Tensor] = {}  # every other weight is the same as version 1's

    def rows(shape) -> torch.Tensor:
        n_tools = len(TOOL_TOKENS)
        return torch.cat([torch.randn((shape[0] - n_tools, *shape[1:]), generator=g),
                          torch.randn((n_tools, *shape[1:]), generator=g_tools)])

    for name, shape in checkpoint_shapes(DeepseekConfig.from_dict(DEMO_CONFIG)):
        if name.endswith("norm.weight") or "layernorm" in name:
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("e_score_correction_bias"):
            t = 0.05 * torch.randn(shape, generator=g)
        elif "embed_tokens" in name:
            t = rows(shape)
        elif name == "lm_head.weight":
            t = rows(shape) * 4 / math.sqrt(shape[-1])
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        keep_fp32 = name.endswith("e_score_correction_bias")
        out[name] = t.contiguous() if keep_fp32 else t.to(torch.bfloat16).contiguous()
    return out


def write_demo_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors, generation_config.json and the tokenizer into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(DEMO_CONFIG, indent=2))
    gen = {"bos_token_id": DEMO_CONFIG["bos_token_id"], "eos_token_id": DEMO_CONFIG["eos_token_id"]}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    save_file(demo_state_dict(seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(path)
    return path


def demo_checkpoint_dir(seed: int = 0) -> Path:
    """The demo checkpoint, generated once into $FATHOM_CACHE (default ~/.cache/fathom).

    Safe when several processes call it at once: each writes a private temporary directory and
    renames it into place; the first rename wins and the others discard their copy.
    """
    root = Path(os.environ.get("FATHOM_CACHE") or Path.home() / ".cache" / "fathom")
    final = root / f"demo-v{DEMO_VERSION}-seed{seed}"
    if (final / "model.safetensors").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        write_demo_checkpoint(tmp, seed)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
