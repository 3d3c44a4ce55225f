"""y = x W^T for an FP8-resident weight W (float8_e4m3fn + its local block scales), one seam, two paths:

* kernel (CUDA): torch's block-scaled FP8 GEMM (``F.scaled_mm`` with DeepSeek's recipe: activations
  quantised per token and 128 channels, ``BlockWise1x128``; weights in 128 × 128 blocks,
  ``BlockWise128x128``), which torch dispatches to cuBLASLt on SM90 (CUDA >= 12.9). Taken when
  ``block_scaled_mm_runs`` says so: a CUDA device that passed a one-time probe, 128 × 128 weight
  blocks, and both weight dims multiples of 128. Why this library: docs/architecture.md ("FP8").
* dequantise (everywhere else, and the fallback): W is dequantised just in time into a reused
  ``Scratch`` buffer and multiplied in the compute dtype. The resident model stays FP8; the result
  is exactly that of the dequantised weight.

``FATHOM_FP8_GEMM=dequantize`` forces the second path (to compare them on a GPU).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

from fathom.model.weights import fp8


class Scratch:
    """Reused buffers for just-in-time dequantised weights, one per (slot, dtype, device), grown to
    the largest request. A view handed out stays valid until the next ``take`` of the same slot; the
    model runs its layers one after another, so one slot serves every Linear (the routed experts
    hold their two stacks in slots 0 and 1 at once)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, slot: int = 0) -> torch.Tensor:
        n = math.prod(shape)
        key = (slot, dtype, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n or buf.is_inference() != torch.is_inference_mode_enabled():
            buf = self._buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


def share_scratch(model: torch.nn.Module) -> Scratch:
    """Give every FP8 layer of ``model`` (modules with a ``scratch`` attribute) one shared Scratch."""
    scratch = Scratch()
    for m in model.modules():
        if hasattr(m, "scratch"):
            m.scratch = scratch
    return scratch


def dequantized(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int], dtype: torch.dtype,
                scratch: Scratch, slot: int = 0) -> torch.Tensor:  # fmt: skip
    """``weight`` (fp8, [..., R, C]) dequantised to ``dtype`` in scratch ``slot``."""
    return fp8.dequantize_into(scratch.take(tuple(weight.shape), dtype, weight.device, slot), weight, scale, block)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
               scratch: Scratch) -> torch.Tensor:  # fmt: skip
    """x [..., K] · W^T for W fp8 [N, K] with local block scales ``scale`` -> [..., N] in x's dtype."""
    if block_scaled_mm_runs(x, weight, block):
        return block_scaled_mm(x.reshape(-1, x.shape[-1]), weight, scale).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, dequantized(weight, scale, block, x.dtype, scratch))


def block_scaled_mm_runs(x: torch.Tensor, weight: torch.Tensor, block: tuple[int, int]) -> bool:
    """Whether the kernel path takes x · W^T: x on a CUDA device whose probe passed, 128 × 128 weight
    blocks, W [N, K] with N and K multiples of 128. False on the CPU (the capability check tests run)."""
    if x.device.type != "cuda" or tuple(block) != (fp8.BLOCK, fp8.BLOCK) or not hasattr(F, "scaled_mm"):
        return False
    n, k = weight.shape[-2:]
    if n % fp8.BLOCK or k % fp8.BLOCK or os.environ.get("FATHOM_FP8_GEMM") == "dequantize":
        return False
    return _kernel_works(x.device.index if x.device.index is not None else torch.cuda.current_device())


def mm_operands(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> tuple:
    """The arguments of ``F.scaled_mm`` for x [M, K] · W^T, laid out as torch checks them (the
    checks run on the meta device too): x quantised per token and 128 channels with its scales
    [M, K/128] outer-dim-major (stride (1, M)); W^T [K, N] column-major; W's scales [N/128, K/128]
    with K/128 padded to a multiple of 4 (L4), transposed to [L4, N/128] (stride (1, L4))."""
    from torch.nn.functional import ScalingType

    xq, sx = fp8.quantize_activations(x)
    sa = sx.t().contiguous().t()
    kb = scale.shape[-1]
    sb = F.pad(scale.float(), (0, -kb % 4)).contiguous().t()
    return xq, weight.t(), sa, ScalingType.BlockWise1x128, sb, ScalingType.BlockWise128x128


def block_scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] · W^T on the block-scaled FP8 kernel -> [M, N] in x's dtype (fp32 or bf16 out)."""
    out = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.bfloat16
    return F.scaled_mm(*mm_operands(x, weight, scale), output_dtype=out).to(x.dtype)


@functools.cache
def _kernel_works(device_index: int) -> bool:
    """One-time probe: the kernel runs on this device and agrees with the dequantised reference
    (torch 2.13 implements the recipe on SM90 with CUDA >= 12.9 only; elsewhere it raises)."""
    device = torch.device("cuda", device_index)
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        w, s = fp8.quantize(torch.randn(256, 256, generator=g))
        x = torch.randn(4, 256, generator=g)
        want = x @ fp8.dequantize(w, s, (0, 256), (0, 256), torch.float32).t()
        got = block_scaled_mm(x.to(device, torch.bfloat16), w.to(device), s.to(device)).float().cpu()
        return bool(((got - want).abs().max() <= 0.05 * want.abs().max()).item())
    except (RuntimeError, NotImplementedError, TypeError):
        return False
