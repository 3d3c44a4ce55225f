"""The MTP module (``fathom.model.mtp``) against a reference computed here from the checkpoint's
tensors: h from transformers' target model (after its final norm), the MTP parts in plain torch,
its decoder block in transformers' DeepseekV3DecoderLayer (filled from the checkpoint's
``model.layers.{L}.`` tensors), causal over the entries at rotary positions i + 1. Nothing of
``fathom.model`` is used to compute the reference."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fathom.model.attention_metadata import AttentionMetadata, contiguous_layout
from fathom.model.kv_cache import allocate_kv_caches
from fathom.model.loader import load_model
from support import model_testing as T

TOKENS = [5, 17, 99, 3, 200, 41, 8, 249, 1, 77, 33, 12]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("v3-mtp")
    hf = T.save_reference(path, "v3", seed=3)
    T.add_mtp_layer(path, seed=4)
    return path, hf


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_block(path, hf_config, L):
    """transformers' decoder block at index L with the checkpoint's MTP block weights."""
    import transformers.models.deepseek_v3.modeling_deepseek_v3 as m

    hf_config._attn_implementation = "eager"
    block = m.DeepseekV3DecoderLayer(hf_config, L).eval()
    tensors = load_file(path / "model.safetensors")
    prefix = f"model.layers.{L}."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix) and ".experts." not in k}
    n = hf_config.n_routed_experts
    e = lambda i, p: tensors[f"{prefix}mlp.experts.{i}.{p}.weight"]
    state["mlp.experts.gate_up_proj"] = torch.stack(
        [torch.cat([e(i, "gate_proj"), e(i, "up_proj")]) for i in range(n)]
    )
    state["mlp.experts.down_proj"] = torch.stack([e(i, "down_proj") for i in range(n)])
    missing, unexpected = block.load_state_dict(state, strict=False)
    assert not [k for k in missing if "rotary" not in k], missing
    extra = {
        "enorm.weight",
        "hnorm.weight",
        "eh_proj.weight",
        "shared_head.norm.weight",
        "shared_head.head.weight",
        "embed_tokens.weight",
    }
    assert set(unexpected) == extra
    return block, tensors, prefix


@torch.no_grad()
def reference_mtp(path, hf, tokens, draft):
    """Draft logits of entries 0 … N-1 (entry i: h_i, token i + 1) and of one recurrent entry N
    (the block's output at entry N-1, ``draft``)."""
    import transformers.models.deepseek_v3.modeling_deepseek_v3 as m

    c = hf.config
    L, eps = c.num_hidden_layers, c.rms_norm_eps
    block, t, p = reference_block(path, c, L)
    h = hf.model(torch.tensor([tokens])).last_hidden_state[0]  # [N+1, H], after the final norm
    ids = tokens[1:] + [draft]
    n = len(ids)
    rotary = m.DeepseekV3RotaryEmbedding(c)
    mask = torch.full((n, n), float("-inf")).triu(1)[None, None]

    def run(prev):  # prev [n, H]: the hidden each entry combines with its token
        e = t[p + "embed_tokens.weight"][torch.tensor(ids)]
        x = torch.cat([rms(e, t[p + "enorm.weight"], eps), rms(prev, t[p + "hnorm.weight"], eps)], -1)
        x = (x @ t[p + "eh_proj.weight"].T)[None]
        pos = torch.arange(1, n + 1)[None]
        y = block(x, attention_mask=mask, position_ids=pos, position_embeddings=rotary(x, pos))[0]
        logits = rms(y, t[p + "shared_head.norm.weight"], eps) @ t[p + "shared_head.head.weight"].T
        return y, logits

    y, _ = run(
        torch.cat([h[:-1], torch.zeros(1, h.shape[1])])
    )  # entries 0 … N-1 (the last is causal-masked off)
    _, logits = run(torch.cat([h[:-1], y[n - 2 : n - 1]]))  # entry N reads the output of entry N-1
    return logits  # [N+1... ] rows 0 … N-1 entries, row N the recurrent one


@torch.no_grad()
def test_draft_logits_match_the_reference(checkpoint):
    path, hf = checkpoint
    model = load_model(path, mtp=True)
    assert model.mtp is not None and model.num_cache_layers == hf.config.num_hidden_layers + 1
    N, bs = len(TOKENS) - 1, 3
    tables, blocks = contiguous_layout([N + 2], bs)
    caches = allocate_kv_caches(model.config, blocks, bs, layers=model.num_cache_layers)
    meta = AttentionMetadata.build([N + 1], [N + 1], tables, bs)
    hidden = model(torch.tensor(TOKENS), meta.positions(), caches, meta)  # the target, paged
    mtp_meta = AttentionMetadata.build([N], [N], tables, bs)  # entries 0 … N-1, chunked as one
    y = model.forward_mtp(
        torch.tensor(TOKENS[1:]), mtp_meta.positions() + 1, hidden[:N], caches[-1], mtp_meta
    )
    ours = model.compute_draft_logits(y)
    draft = int(ours[-1].argmax())
    step = AttentionMetadata.build([1], [N + 1], tables, bs)  # one recurrent entry over the MTP cache
    y2 = model.forward_mtp(torch.tensor([draft]), step.positions() + 1, y[-1:], caches[-1], step)
    ours = torch.cat([ours, model.compute_draft_logits(y2)])
    ref = reference_mtp(path, hf, TOKENS, draft)
    assert (ours - ref).abs().max() <= T.tolerance(ref)


def test_loader_skips_the_mtp_module_unless_asked(checkpoint):
    path, _ = checkpoint
    assert load_model(path).mtp is None
    config = json.loads((path / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == 1


def test_mtp_needs_a_checkpoint_with_one(tmp_path):
    T.save_reference(tmp_path, "v3", seed=1)
    with pytest.raises(ValueError, match="num_nextn_predict_layers"):
        load_model(tmp_path, mtp=True)
