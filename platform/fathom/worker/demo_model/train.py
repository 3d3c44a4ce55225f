"""Train the demo model from scratch on a CPU and export its checkpoint, bit for bit reproducibly:

    PYTHONPATH=platform python -m fathom.worker.demo_model.train --out /tmp/demo --check

Fixed seeds, a deterministic corpus (corpus.py), `torch.use_deterministic_algorithms` and one
intra-op thread make the file a function of the code and of the torch build (see
docs/demo_model.md for the versions the shipped file was made with).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fathom.worker.demo import EOS, MERGES, SPECIAL_TOKENS, write_tokenizer
from fathom.worker.demo_model import CHECKPOINT
from fathom.worker.demo_model.corpus import conversations
from fathom.worker.demo_model.net import DemoDeepseekV3

SEED = 0
CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 256 + len(MERGES) + len(SPECIAL_TOKENS),
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 64,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
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
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 1,
    "bos_token_id": 256 + len(MERGES),
    "eos_token_id": 256 + len(MERGES) + 1,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
}


class Hyper:
    steps = 2400
    batch = 16
    lr = 2.5e-3
    min_lr_ratio = 0.1
    warmup = 50
    weight_decay = 0.1
    mtp_weight = 0.3  # DeepSeek-V3's lambda for the first 10T tokens
    bias_gamma = 1e-3  # aux-loss-free balancing speed


def setup(threads: int = 1) -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def tokenizer(tmp: Path):
    from fathom.engine.tokenizer import Tokenizer

    write_tokenizer(tmp)
    return Tokenizer.from_pretrained(tmp)


def examples(tok, seed: int = SEED):
    """Endless (token ids, loss mask): the rendered prompt, then the completion and EOS (mask 1)."""
    eos = tok.token_to_id(EOS)
    for messages, completion in conversations(seed):
        prompt = tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)
        out = tok.encode(completion, add_special_tokens=False) + [eos]
        yield prompt + out, [0] * len(prompt) + [1] * len(out)


def batches(tok, size: int, seed: int = SEED, pool: int = 16):
    """Endless right-padded batches (ids [B, S], mask [B, S]) of similar lengths: each `pool`
    batches' worth of examples is sorted by length, cut into batches, and those are shuffled."""
    stream = examples(tok, seed)
    rng = random.Random(seed)
    pad = tok.token_to_id(EOS)
    while True:
        chunk = sorted(itertools.islice(stream, size * pool), key=lambda e: len(e[0]))
        cuts = [chunk[i : i + size] for i in range(0, len(chunk), size)]
        rng.shuffle(cuts)
        for cut in cuts:
            s = max(len(ids) for ids, _ in cut)
            ids = torch.tensor([i + [pad] * (s - len(i)) for i, _ in cut])
            mask = torch.tensor([m + [0] * (s - len(m)) for _, m in cut], dtype=torch.bool)
            yield ids, mask


def init_model(config: dict = CONFIG) -> DemoDeepseekV3:
    torch.manual_seed(SEED)
    model = DemoDeepseekV3(config)
    std = config["initializer_range"]
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            torch.nn.init.ones_(p)
        else:
            torch.nn.init.normal_(p, std=std)
    return model


def loss_fn(model: DemoDeepseekV3, ids, mask, mtp_weight: float):
    """Main CE on token t+1 and MTP CE on token t+2, over completion tokens only."""
    logits, mtp = model(ids)
    main = F.cross_entropy(logits[:, :-1][mask[:, 1:]], ids[:, 1:][mask[:, 1:]])
    extra = F.cross_entropy(mtp[:, :-1][mask[:, 2:]], ids[:, 2:][mask[:, 2:]])
    return main + mtp_weight * extra, main.detach(), extra.detach()


def lr_at(step: int, h=Hyper) -> float:
    if step < h.warmup:
        return h.lr * (step + 1) / h.warmup
    t = (step - h.warmup) / max(1, h.steps - h.warmup)
    return h.lr * (h.min_lr_ratio + (1 - h.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train(tok, steps: int, h=Hyper, log_every: int = 50, on_step=None) -> DemoDeepseekV3:
    """`steps` steps of Hyper's schedule (a prefix of the full run when steps < h.steps)."""
    model = init_model()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": h.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=h.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    data = batches(tok, h.batch)
    start = time.monotonic()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, h)
        ids, mask = next(data)
        loss, main, mtp = loss_fn(model, ids, mask, h.mtp_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for moe in model.moe_layers():
            moe.update_bias(h.bias_gamma)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step:5d}  loss {main.item():.4f}  mtp {mtp.item():.4f}  lr {lr_at(step, h):.2e}  "
                f"{time.monotonic() - start:.0f}s",
                flush=True,
            )
        if on_step is not None:
            on_step(step + 1, model)
    return model


def checkpoint_tensors(model: DemoDeepseekV3) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict: bf16 weights, fp32 e_score_correction_bias, and the MTP layer's
    copies of the embedding and output head (DeepSeek-V3's checkpoint layout)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    n = model.c["num_hidden_layers"]
    for i in range(model.c["num_nextn_predict_layers"]):
        sd[f"model.layers.{n + i}.embed_tokens.weight"] = sd["model.embed_tokens.weight"].clone()
        sd[f"model.layers.{n + i}.shared_head.head.weight"] = sd["lm_head.weight"].clone()
    return {
        k: (v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)).contiguous()
        for k, v in sorted(sd.items())
    }


def export(model: DemoDeepseekV3, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.c, indent=2) + "\n")
    gen = {"bos_token_id": model.c["bos_token_id"], "eos_token_id": model.c["eos_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    save_file(checkpoint_tensors(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(out)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    ap.add_argument("--steps", type=int, default=Hyper.steps, help="stop early (the file then differs)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1 for the shipped file)")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the file equals the shipped one")
    args = ap.parse_args(argv)
    setup(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer(Path(tmp))
    model = train(tok, args.steps)
    export(model, args.out)
    ours, shipped = sha256(args.out / "model.safetensors"), sha256(CHECKPOINT / "model.safetensors")
    print(f"{args.out / 'model.safetensors'}  sha256 {ours}\nshipped                      sha256 {shipped}")
    if args.check and ours != shipped:
        raise SystemExit("the trained file differs from the shipped one (torch build or CPU differ?)")


if __name__ == "__main__":
    main()
