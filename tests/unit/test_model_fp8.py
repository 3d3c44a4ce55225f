"""FP8-resident weights: block grids, just-in-time dequantisation, the Linear seam, the loader.

The resident model keeps DeepSeek's float8_e4m3fn bytes and its block scales; on the CPU every
product goes through the weight dequantised into a scratch buffer, so the logits equal those of
transformers run on the dequantised checkpoint, in both attention forms and on every MoE path.
"""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fathom.model.layers import fp8_gemm
from fathom.model.layers.linear import Linear, column_parallel, row_parallel
from fathom.model.loader import load_model
from fathom.model.weights import fp8
from fathom.parallel.context import ParallelContext
from support import model_testing as T

PROMPT = [3, 14, 15, 92, 65, 35, 89, 79]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """(fp32 checkpoint, its FP8 quantisation, transformers on the dequantised FP8 weights)."""
    d = tmp_path_factory.mktemp("fp8")
    T.save_reference(d / "ref", "v3", seed=5)
    T.quantize_checkpoint(d / "ref", d / "fp8", d / "deq")
    return d / "ref", d / "fp8", T.load_reference(d / "deq")


@pytest.mark.parametrize("shape, block", [((300, 260), (128, 128)), ((576, 7 * 64), (128, 64)),
                                          ((3, 64, 48), (16, 128)), ((40, 8), (8, 8))])  # fmt: skip
def test_dequantize_into_equals_the_reference_dequantisation(shape, block):
    w = torch.randn(shape)
    stack = [fp8.quantize(m, block) for m in w.view(-1, *shape[-2:])]
    q, s = torch.stack([a for a, _ in stack]), torch.stack([b for _, b in stack])
    want = torch.stack([(a.float() * b.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
                         [: shape[-2], : shape[-1]]) for a, b in stack])  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        out = fp8.dequantize_into(torch.empty(q.shape, dtype=dtype), q, s, block)
        assert torch.equal(out, want.to(dtype))


@pytest.mark.parametrize("parts, dim", [(2, 0), (4, 0), (3, 1), (8, 1), (1, 0)])
def test_a_ranks_local_scale_grid_dequantises_to_its_slice(parts, dim):
    """Any rank's part of a 128×128-block-quantised weight, held with the local grid (gcd(128, part)
    along the split dim), dequantises to exactly that part of the full dequantised weight."""
    w = torch.randn(384, 312)
    q, s = fp8.quantize(w)
    full = fp8.dequantize(q, s, (0, 384), (0, 312), torch.float32)
    size = w.shape[dim] // parts
    for r in range(parts):
        a, b = r * size, (r + 1) * size
        rows, cols = ((a, b), (0, 312)) if dim == 0 else ((0, 384), (a, b))
        part = q[rows[0] : rows[1], cols[0] : cols[1]]
        block = tuple(fp8.local_block(n, parts > 1 and d == dim) for d, n in enumerate(part.shape))
        (r0, _), (c0, _) = fp8.block_range(*rows), fp8.block_range(*cols)
        grid = fp8.local_scales(s[r0:, c0:], (r0, c0), (rows[0], cols[0]), tuple(part.shape), block)
        assert grid.shape == fp8.scale_shape(tuple(part.shape), block)
        got = fp8.dequantize_into(torch.empty(part.shape), part, grid, block)
        assert torch.equal(got, full[rows[0] : rows[1], cols[0] : cols[1]])


def test_fp8_linear_equals_the_dequantised_product_and_holds_fp8():
    ctx = ParallelContext.single()
    lin = column_parallel(256, 384, ctx, 1, "out", torch.float32, fp8=True)
    q, s = fp8.quantize(torch.randn(384, 256))
    lin.weight.copy_(q)
    lin.weight_scale_inv.copy_(s)
    assert lin.weight.dtype == torch.float8_e4m3fn and lin.fp8_block == (128, 128)
    x = torch.randn(5, 256)
    dense = fp8.dequantize(q, s, (0, 384), (0, 256), torch.float32)
    assert torch.equal(lin(x), F.linear(x, dense))
    assert torch.equal(lin.dense_weight(), dense)
    scratch = lin.scratch.take((2, 2), torch.float32, torch.device("cpu"))
    assert scratch.data_ptr() == lin.dense_weight().data_ptr()  # one buffer, reused


def test_split_layers_use_block_grids_that_stay_inside_checkpoint_blocks():
    ctx = ParallelContext.single()
    assert column_parallel(64, 160, ctx, 2, "x", fp8=True).fp8_block == (16, 128)  # 80 rows of 160
    assert column_parallel(64, 160, ctx, 1, "x", fp8=True).fp8_block == (128, 128)
    assert row_parallel(96, 64, ctx, 2, "x", reduce=False, fp8=True).fp8_block == (128, 16)
    assert Linear(8, 8, ctx, dtype=torch.float32).weight.dtype == torch.float32


def test_the_kernel_path_is_behind_a_capability_check_and_its_operands_pass_torchs_checks():
    """On the CPU the block-scaled kernel is never taken. Its operands are laid out as torch's
    scaled_mm checks them (run here on the meta device), and the recipe it computes, activations
    quantised per token and 128 channels, is within FP8 rounding of the dequantised product."""
    q, s = fp8.quantize(torch.randn(256, 384))
    x = torch.randn(3, 384)
    assert not fp8_gemm.block_scaled_mm_runs(x, q, (128, 128))
    if hasattr(F, "scaled_mm"):
        meta = [t.to("meta") for t in (x, q, s)]
        out = F.scaled_mm(*fp8_gemm.mm_operands(*meta), output_dtype=torch.bfloat16)
        assert out.shape == (3, 256)
    xq, sx = fp8.quantize_activations(x)
    assert xq.dtype == torch.float8_e4m3fn and sx.shape == (3, 3)
    emulated = (xq.float() * sx.repeat_interleave(128, 1)) @ fp8.dequantize(q, s, (0, 256), (0, 384), torch.float32).t()
    exact = x @ fp8.dequantize(q, s, (0, 256), (0, 384), torch.float32).t()
    assert float((emulated - exact).abs().max()) <= 0.05 * float(exact.abs().max())


def fp8_params(model) -> dict[str, torch.dtype]:
    return {n: p.dtype for n, p in model.named_parameters()}


def test_fp8_checkpoint_stays_fp8_and_matches_transformers_on_every_path(ckpts):
    """(TP, EP) = (1, 1): logits in both attention forms and with the general paths, and greedy
    tokens over the paged cache, equal transformers' on the dequantised weights."""
    _, fp8_dir, ref = ckpts
    model = load_model(fp8_dir)
    dtypes = fp8_params(model)
    assert dtypes["model.layers.1.mlp.experts.w13"] == torch.float8_e4m3fn
    assert dtypes["model.layers.0.self_attn.kv_b_proj.weight"] == torch.float8_e4m3fn
    assert dtypes["model.layers.0.mlp.down_proj.weight"] == torch.float8_e4m3fn
    for kept in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.0.self_attn.kv_a_layernorm.weight"):  # fmt: skip
        assert dtypes[kept] == torch.float32
    want = T.reference_logits(ref, PROMPT)
    for mode in ("expand", "absorb"):
        model.set_attention_mode(mode)
        assert float((T.full_logits(model, [PROMPT])[0] - want).abs().max()) <= T.tolerance(want)
    model.set_attention_mode("auto")
    greedy = T.reference_greedy(ref, PROMPT, 6)
    assert T.greedy_decode(model, [PROMPT], 6) == [greedy]
    model.set_fast_paths(batch_decode=False, moe_dense_limit=0)
    assert T.greedy_decode(model, [PROMPT], 6) == [greedy]
    assert float((T.full_logits(model, [PROMPT])[0] - want).abs().max()) <= T.tolerance(want)


def test_quantization_none_dequantises_and_fp8_quantises_a_plain_checkpoint_online(ckpts):
    ref_dir, fp8_dir, _ = ckpts
    want = T.full_logits(load_model(fp8_dir), [PROMPT])[0]
    dequantised = load_model(fp8_dir, quantization="none")
    assert torch.float8_e4m3fn not in set(fp8_params(dequantised).values())
    assert float((T.full_logits(dequantised, [PROMPT])[0] - want).abs().max()) <= T.tolerance(want)
    online = load_model(ref_dir, quantization="fp8")  # fp32 checkpoint, quantised at load
    assert fp8_params(online)["model.layers.1.mlp.experts.w2"] == torch.float8_e4m3fn
    # at TP 1 the local blocks hold the same elements as the checkpoint's 128×128 ones: same weights
    assert float((T.full_logits(online, [PROMPT])[0] - want).abs().max()) <= T.tolerance(want)
    with pytest.raises(ValueError, match="quantization"):
        load_model(fp8_dir, quantization="int4")


def test_resident_bytes_of_an_fp8_checkpoint_are_its_fp8_scale_and_plain_bytes(ckpts):
    """Resident weight bytes <= 1.05 × (FP8 bytes + scale bytes + the non-quantised tensors' bytes),
    measured from the loaded tensors; the dequantised load is far above."""
    _, fp8_dir, _ = ckpts
    stored = sum(t.nbytes for t in load_file(fp8_dir / "model.safetensors").values())
    resident = load_model(fp8_dir)
    held = sum(t.nbytes for t in (*resident.parameters(), *resident.buffers()))
    dequantised = load_model(fp8_dir, quantization="none")
    held_dequantised = sum(t.nbytes for t in (*dequantised.parameters(), *dequantised.buffers()))
    assert held <= 1.05 * stored, (held, stored)
    assert held_dequantised > 1.5 * stored


@pytest.mark.parametrize("rank, world, ep", [(1, 2, 1), (1, 2, 2), (3, 4, 2)])
def test_sharded_ranks_keep_their_slices_fp8_with_aligned_scales(ckpts, rank, world, ep):
    """Each rank holds its slice's original FP8 bytes, and its scale grid dequantises them to the
    slice of the dequantised checkpoint (loading needs no process group)."""
    _, fp8_dir, _ = ckpts
    ctx = ParallelContext(rank=rank, world_size=world, ep_size=ep, tp_group=object())
    model = load_model(fp8_dir, ctx)
    tensors = load_file(fp8_dir / "model.safetensors")
    name = "model.layers.0.self_attn.kv_b_proj.weight"
    lin = model.get_submodule(name.rsplit(".", 1)[0])
    rows = lin.weight.shape[0]
    want_q = tensors[name][rank * rows : (rank + 1) * rows]
    assert torch.equal(lin.weight.view(torch.uint8), want_q.view(torch.uint8))
    full = fp8.dequantize(tensors[name], tensors[name + "_scale_inv"], (0, want_q.shape[0] * world),
                          (0, want_q.shape[1]), torch.float32)  # fmt: skip
    assert torch.equal(lin.dense_weight(), full[rank * rows : (rank + 1) * rows])
    experts = model.model.layers[1].mlp.experts
    inter = experts.inter
    e = experts.local.start + 1
    up = f"model.layers.1.mlp.experts.{e}.up_proj.weight"
    up_full = fp8.dequantize(tensors[up], tensors[up + "_scale_inv"], (0, 32), (0, 64), torch.float32)
    w13 = experts._dequantized("w13", [1], 0)[0]
    assert torch.equal(w13[inter:], up_full[ctx.moe_tp_rank * inter : (ctx.moe_tp_rank + 1) * inter])
