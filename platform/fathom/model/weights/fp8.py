"""FP8 (float8_e4m3fn) weights with block scales, as DeepSeek-V3/R1 publish them.

A checkpoint weight W [out, in] comes with ``weight_scale_inv`` S [ceil(out/128), ceil(in/128)];
the real weight is W[i, j] * S[i // 128, j // 128]. Dequantisation works on any row/column slice,
reading only the scale blocks that slice touches.

A rank that keeps its slice FP8-resident holds it with a *local* scale grid: one float32 scale per
(b_r × b_c) block of the local tensor, the last block of a dim possibly partial. The local block is
128 along a dim the rank holds whole, and gcd(128, local size) along a dim split over ranks (or
stacked, as w13 stacks each expert's gate and up slices), so that every local block lies inside
one checkpoint block: the local grid is then a gather of the checkpoint's scales (``local_scales``)
and dequantising the local tensor gives exactly the checkpoint's values. Real DeepSeek shards are
128-aligned (local block 128 × 128, the block-scaled GEMM's layout); tiny test models are not.
"""

from __future__ import annotations

import math

import torch

BLOCK = 128
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


def expand_scale(scale: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """Per-element scale for W[rows[0]:rows[1], cols[0]:cols[1]] from the scale blocks covering it.

    ``scale`` holds block rows rows[0]//128 … and block cols cols[0]//128 … (a slice of S).
    """
    full = scale.float().repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    r0, c0 = rows[0] % BLOCK, cols[0] % BLOCK
    return full[r0 : r0 + rows[1] - rows[0], c0 : c0 + cols[1] - cols[0]]


def dequantize(weight: torch.Tensor, scale: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int],
               dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """weight: the fp8 slice [rows, cols] of W; scale: the S blocks covering it -> ``dtype``."""
    return (weight.float() * expand_scale(scale, rows, cols)).to(dtype)


def block_range(start: int, stop: int) -> tuple[int, int]:
    """Scale blocks [first, last+1) covering elements [start, stop)."""
    return start // BLOCK, -(-stop // BLOCK)


def quantize(weight: torch.Tensor, block: tuple[int, int] = (BLOCK, BLOCK)) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (fp8 W, scale) with one scale per ``block`` (amax / 448; the last block of a dim
    may be partial). With the default 128 × 128 blocks this is DeepSeek's ``weight_scale_inv``."""
    (out_f, in_f), (br, bc) = weight.shape, block
    pad_r, pad_c = -out_f % br, -in_f % bc
    w = torch.nn.functional.pad(weight.float(), (0, pad_c, 0, pad_r))
    blocks = w.view(w.shape[0] // br, br, w.shape[1] // bc, bc)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)  # [R, C]
    scale = amax / FP8_MAX
    q = (blocks / scale[:, None, :, None]).view_as(w)[:out_f, :in_f].to(FP8)
    return q, scale


# ---- FP8-resident weights: the local scale grid ---------------------------------------------------


def local_block(size: int, split: bool) -> int:
    """Rows (or columns) per local scale block along a dim of local ``size``: 128 when the rank holds
    the dim whole (the last block may be partial), gcd(128, size) when the dim is a rank's part of a
    split (or one of several stacked slices), so that no local block straddles a checkpoint block."""
    return math.gcd(BLOCK, size) if split else BLOCK


def scale_shape(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    """Local scale grid of a [rows, cols] weight held in ``block``-sized blocks (last ones partial)."""
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


def local_scales(scale: torch.Tensor, first_block: tuple[int, int], start: tuple[int, int],
                 shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """The local scale grid [ceil(rows/b_r), ceil(cols/b_c)] of the slice W[start : start + shape]
    from ``scale``, the checkpoint blocks covering it (block row ``first_block[0]`` onward, block col
    ``first_block[1]`` onward): local block (i, j) begins at W[start[0] + i·b_r, start[1] + j·b_c]."""
    n_r, n_c = scale_shape(shape, block)
    rows = (start[0] + torch.arange(n_r) * block[0]) // BLOCK - first_block[0]
    cols = (start[1] + torch.arange(n_c) * block[1]) // BLOCK - first_block[1]
    return scale.float()[rows][:, cols]


def _parts(n: int, b: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, first block, block size) of the whole blocks of a dim of size n, then its tail."""
    whole = n // b * b
    parts = [(0, whole, 0, b)] if whole else []
    if n > whole:
        parts.append((whole, n, whole // b, n - whole))
    return parts


def dequantize_into(out: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    block: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """out[..., R, C] = weight[..., R, C] (fp8) × its block's scale (``scale`` [..., ceil(R/b_r),
    ceil(C/b_c)]), in out's dtype, with no temporary the size of the weight; returns ``out``.
    Equals ``(weight.float() * expanded scale).to(out.dtype)`` exactly."""
    out.copy_(weight)
    R, C = weight.shape[-2:]
    for r0, r1, i, rb in _parts(R, block[0]):
        for c0, c1, j, cb in _parts(C, block[1]):
            region = out[..., r0:r1, c0:c1].unflatten(-2, (-1, rb)).unflatten(-1, (-1, cb))
            s = scale[..., i : i + (r1 - r0) // rb, j : j + (c1 - c0) // cb]
            region.mul_(s.unsqueeze(-1).unsqueeze(-3))  # [..., nR, 1, nC, 1]
    return out


# ---- activations (the block-scaled GEMM's left operand) -------------------------------------------


def quantize_activations(x: torch.Tensor, group: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 x, scale float32 [M, K / group]): one scale per token and group of ``group``
    channels (amax / 448), DeepSeek-V3's activation recipe (§3.3.2, "1 × 128 tiles")."""
    M, K = x.shape
    if K % group:
        raise ValueError(f"activation width {K} is not a multiple of the quantisation group {group}")
    g = x.float().view(M, K // group, group)
    scale = g.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX  # [M, K/group]
    q = (g / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).view(M, K).to(FP8)
    return q, scale
