"""FP8 (float8_e4m3fn) weights with 128×128 block scales, as DeepSeek-V3/R1 publish them.

A weight W [out, in] comes with ``weight_scale_inv`` S [ceil(out/128), ceil(in/128)]; the real
weight is W[i, j] * S[i // 128, j // 128]. Dequantisation works on any row/column slice, reading
only the scale blocks that slice touches.
"""

from __future__ import annotations

import torch

BLOCK = 128


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


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (fp8 W, weight_scale_inv) with one scale per 128×128 block (amax / 448)."""
    out_f, in_f = weight.shape
    pad_r, pad_c = -out_f % BLOCK, -in_f % BLOCK
    w = torch.nn.functional.pad(weight.float(), (0, pad_c, 0, pad_r))
    blocks = w.view(w.shape[0] // BLOCK, BLOCK, w.shape[1] // BLOCK, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)  # [R, C]
    scale = amax / torch.finfo(torch.float8_e4m3fn).max
    q = (blocks / scale[:, None, :, None]).view_as(w)[:out_f, :in_f].to(torch.float8_e4m3fn)
    return q, scale
