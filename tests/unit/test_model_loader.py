import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fathom.model.loader import load_model
from fathom.model.weights import fp8
from fathom.parallel.context import ParallelContext
from support import model_testing as T

PROMPT = [3, 14, 15, 92, 65, 35, 89, 79]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("v3")
    hf = T.save_reference(d, "v3", seed=3)
    return d, hf


def copy_with(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_is_named(ckpt, tmp_path):
    d = copy_with(ckpt[0], tmp_path / "m", lambda t: t.pop("model.layers.2.mlp.experts.5.up_proj.weight"))
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight"):
        load_model(d)


def test_misshaped_tensor_is_named(ckpt, tmp_path):
    def edit(t):
        t["model.layers.0.self_attn.kv_b_proj.weight"] = torch.zeros(3, 3)

    with pytest.raises(ValueError, match=r"kv_b_proj\.weight.*\(3, 3\)"):
        load_model(copy_with(ckpt[0], tmp_path / "m", edit))


def test_unexpected_tensor_is_named(ckpt, tmp_path):
    d = copy_with(
        ckpt[0], tmp_path / "m", lambda t: t.update({"model.layers.0.mlp.surprise": torch.zeros(2)})
    )
    with pytest.raises(ValueError, match="surprise"):
        load_model(d)


@pytest.mark.parametrize("rank, world, ep", [(0, 1, 1), (1, 2, 1), (1, 2, 2), (3, 4, 2)])
def test_routed_experts_load_stacked_as_this_ranks_slices(ckpt, rank, world, ep):
    """A rank's routed experts are only w13 [E_local, 2·I_r, H] (gate rows, then up rows) and
    w2 [E_local, H, I_r], holding its experts' slices in id order (loading needs no process group)."""
    ctx = ParallelContext(rank=rank, world_size=world, ep_size=ep, tp_group=object() if world > 1 else None)
    model = load_model(ckpt[0], ctx)
    tensors = load_file(ckpt[0] / "model.safetensors")
    params = dict(model.named_parameters())
    assert [n for n in params if ".mlp.experts." in n and ".w13" not in n and ".w2" not in n] == []
    w13, w2 = params["model.layers.1.mlp.experts.w13"], params["model.layers.1.mlp.experts.w2"]
    local, inter = ctx.local_experts(8), 32 // ctx.moe_tp_size
    rows = slice(ctx.moe_tp_rank * inter, (ctx.moe_tp_rank + 1) * inter)
    assert w13.shape == (len(local), 2 * inter, 64) and w2.shape == (len(local), 64, inter)
    for j, e in enumerate(local):
        gate, up, down = (
            tensors[f"model.layers.1.mlp.experts.{e}.{p}.weight"]
            for p in ("gate_proj", "up_proj", "down_proj")
        )
        assert torch.equal(w13[j], torch.cat([gate[rows], up[rows]]))
        assert torch.equal(w2[j], down[:, rows])


def test_mtp_layer_is_skipped(ckpt, tmp_path):
    def edit(t):
        t["model.layers.3.eh_proj.weight"] = torch.zeros(4, 4)
        t["model.layers.3.self_attn.kv_b_proj.weight"] = torch.zeros(1)

    model = load_model(copy_with(ckpt[0], tmp_path / "m", edit))
    ref = T.reference_logits(ckpt[1], PROMPT)
    assert float((T.full_logits(model, [PROMPT])[0] - ref).abs().max()) <= T.tolerance(ref)


def test_no_safetensors_is_an_error_and_pickles_are_never_read(ckpt, tmp_path):
    (tmp_path / "config.json").write_text((ckpt[0] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(tmp_path)


def test_index_with_several_files(ckpt, tmp_path):
    tensors = load_file(ckpt[0] / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate([names[:half], names[half:]]):
        f = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(tmp_path / f))
        weight_map.update(dict.fromkeys(part, f))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text((ckpt[0] / "config.json").read_text())
    ref = T.reference_logits(ckpt[1], PROMPT)
    assert float((T.full_logits(load_model(tmp_path), [PROMPT])[0] - ref).abs().max()) <= T.tolerance(ref)


def test_fp8_block_dequantisation_of_slices():
    w = torch.randn(300, 260)
    q, scale = fp8.quantize(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (3, 3)
    full = fp8.dequantize(q, scale, (0, 300), (0, 260), torch.float32)
    assert float((full - w).abs().max()) < 0.07 * float(w.abs().max())  # e4m3 keeps 3 mantissa bits
    r0, r1 = 75, 150
    (b0, b1) = fp8.block_range(r0, r1)
    part = fp8.dequantize(q[r0:r1], scale[b0:b1], (r0, r1), (0, 260), torch.float32)
    assert torch.equal(part, full[r0:r1])
    c0, c1 = 130, 260
    (b0, b1) = fp8.block_range(c0, c1)
    part = fp8.dequantize(q[:, c0:c1], scale[:, b0:b1], (0, 300), (c0, c1), torch.float32)
    assert torch.equal(part, full[:, c0:c1])


def test_fp8_checkpoint_loads_and_matches_the_dequantised_reference(ckpt, tmp_path):
    T.quantize_checkpoint(ckpt[0], tmp_path / "fp8", tmp_path / "deq")
    ours = T.full_logits(load_model(tmp_path / "fp8"), [PROMPT])[0]
    ref = T.reference_logits(T.load_reference(tmp_path / "deq"), PROMPT)
    assert float((ours - ref).abs().max()) <= T.tolerance(ref)
    unquantised = T.reference_logits(ckpt[1], PROMPT)
    assert float((ours - unquantised).abs().max()) > 100 * T.tolerance(ref)  # the fp8 weights were used


def test_fp8_weight_without_scale_is_named(ckpt, tmp_path):
    T.quantize_checkpoint(ckpt[0], tmp_path / "fp8", tmp_path / "deq")
    name = "model.layers.1.mlp.experts.2.down_proj.weight"
    d = copy_with(tmp_path / "fp8", tmp_path / "broken", lambda t: t.pop(name + "_scale_inv"))
    with pytest.raises(ValueError, match=name.replace(".", r"\.") + "_scale_inv"):
        load_model(d)
