"""CUDA: the block-scaled FP8 GEMM (torch's F.scaled_mm, DeepSeek's recipe) equals the dequantised
reference within FP8 activation rounding, and an FP8 checkpoint on the GPU agrees with the CPU run
(run where a GPU exists; the kernel tests need SM90, where torch implements the recipe)."""

import pytest
import torch
import torch.nn.functional as F

from fathom.model.layers import fp8_gemm
from fathom.model.loader import load_model
from fathom.model.weights import fp8
from fathom.parallel.context import ParallelContext
from support import model_testing as T

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability(0) == (9, 0)
needs_kernel = pytest.mark.skipif(not SM90, reason="torch's block-scaled FP8 GEMM runs on SM90 only")
# a model whose projections are multiples of 128 (so they take the kernel): 2 heads of 64 + 64 dims
KERNEL_SIZED = {"hidden_size": 256, "intermediate_size": 256, "moe_intermediate_size": 128, "vocab_size": 512,
                "num_attention_heads": 2, "num_key_value_heads": 2, "qk_nope_head_dim": 64, "qk_rope_head_dim": 64,
                "v_head_dim": 64, "kv_lora_rank": 128, "q_lora_rank": 128}  # fmt: skip
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [300, 12, 99, 7]]


@needs_kernel
def test_the_kernel_probe_passes_on_sm90():
    assert fp8_gemm._kernel_works(torch.cuda.current_device())


@needs_kernel
@pytest.mark.parametrize("m", [1, 7, 64, 300])
@pytest.mark.parametrize("n, k", [(256, 384), (2048, 7168), (7168, 2048)])
def test_block_scaled_gemm_equals_the_dequantised_reference(m, n, k):
    g = torch.Generator().manual_seed(m + n)
    q, s = fp8.quantize(torch.randn(n, k, generator=g) / k**0.5)
    x = torch.randn(m, k, generator=g)
    want = x @ fp8.dequantize(q, s, (0, n), (0, k), torch.float32).t()
    dev = torch.device("cuda")
    assert fp8_gemm.block_scaled_mm_runs(x.to(dev), q.to(dev), (128, 128))
    got = fp8_gemm.fp8_linear(x.to(dev, torch.bfloat16), q.to(dev), s.to(dev), (128, 128), fp8_gemm.Scratch())
    err = (got.float().cpu() - want).norm() / want.norm()
    assert float(err) < 0.03  # activations rounded to e4m3 per 128 channels, bf16 out


@needs_kernel
def test_the_dequantising_fallback_on_cuda_agrees_with_the_kernel(monkeypatch):
    q, s = fp8.quantize(torch.randn(512, 256))
    x = torch.randn(5, 256, device="cuda", dtype=torch.bfloat16)
    kernel = fp8_gemm.fp8_linear(x, q.cuda(), s.cuda(), (128, 128), fp8_gemm.Scratch())
    monkeypatch.setenv("FATHOM_FP8_GEMM", "dequantize")
    fallback = fp8_gemm.fp8_linear(x, q.cuda(), s.cuda(), (128, 128), fp8_gemm.Scratch())
    assert float((kernel.float() - fallback.float()).norm() / fallback.float().norm()) < 0.03
    assert torch.equal(fallback, F.linear(x, fp8.dequantize(q, s, (0, 512), (0, 256), torch.bfloat16).cuda()))


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp8-cuda")
    T.save_reference(d / "ref", "v3", seed=11, **KERNEL_SIZED)
    T.quantize_checkpoint(d / "ref", d / "fp8", d / "deq")
    return d / "fp8"


def test_fp8_checkpoint_on_cuda_is_close_to_the_cpu_reference_and_decodes(fp8_checkpoint):
    """bf16 activations and (on SM90) FP8 activations in the GEMMs: most positions stay close to the
    float32 CPU logits of the same FP8 weights; decoding (also with an FP8 KV cache) runs."""
    ref = T.full_logits(load_model(fp8_checkpoint), PROMPTS)
    gpu = load_model(fp8_checkpoint, ParallelContext.single("cuda"), dtype=torch.bfloat16)
    assert gpu.model.layers[1].mlp.experts.w13.dtype == torch.float8_e4m3fn
    out = T.full_logits(gpu, PROMPTS)
    errs = torch.cat([(o.cpu() - r).abs().amax(-1) / r.abs().max() for r, o in zip(ref, out, strict=True)])
    assert float((errs <= 0.05).float().mean()) >= 0.75
    assert len(T.greedy_decode(gpu, PROMPTS, 8)[0]) == 8
    assert len(T.greedy_decode(gpu, PROMPTS, 8, kv_dtype=torch.float8_e4m3fn)[0]) == 8
