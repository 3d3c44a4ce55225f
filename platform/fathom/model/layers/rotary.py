"""Rotary position embedding of the rope dims, with YaRN scaling (DeepSeek-V2 §2.1.3, YaRN paper).

YaRN changes three things: the inverse frequencies (interpolated below ``beta_slow`` rotations,
extrapolated above ``beta_fast``), the magnitude of cos/sin (``attention_factor`` =
mscale(factor, mscale) / mscale(factor, mscale_all_dim)), and the softmax scale, multiplied by
mscale(factor, mscale_all_dim)^2 (see ``softmax_scale``).
"""

from __future__ import annotations

import math

import torch

from fathom.model.config import DeepseekConfig, RopeConfig


def yarn_mscale(scale: float, mscale: float | None = 1.0) -> float:
    if scale <= 1 or not mscale:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def softmax_scale(config: DeepseekConfig) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN."""
    scale = config.qk_dim**-0.5
    rope = config.rope
    if rope.rope_type != "default" and rope.mscale_all_dim:
        m = yarn_mscale(rope.factor, rope.mscale_all_dim)
        scale *= m * m
    return scale


def _yarn_inv_freq(rope: RopeConfig, dim: int) -> tuple[torch.Tensor, float]:
    base, factor = rope.rope_theta, rope.factor
    orig = rope.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolation = 1 - ramp  # weight of the unscaled frequency
    inv_freq = (1.0 / (factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * extrapolation
    if rope.attention_factor is not None:
        attention_factor = rope.attention_factor
    elif rope.mscale and rope.mscale_all_dim:
        attention_factor = yarn_mscale(factor, rope.mscale) / yarn_mscale(factor, rope.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)
    return inv_freq, attention_factor


class Rotary:
    """Rotates the rope dims of queries and keys at given positions (no learned state)."""

    def __init__(self, config: DeepseekConfig, device: torch.device | None = None) -> None:
        rope, dim = config.rope, config.qk_rope_head_dim
        if rope.rope_type == "yarn":
            inv_freq, self.attention_factor = _yarn_inv_freq(rope, dim)
        else:
            inv_freq = 1.0 / (rope.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            self.attention_factor = 1.0
        self.inv_freq = inv_freq.to(device) if device is not None else inv_freq  # [dim/2]
        self.interleave = config.rope_interleave

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions Long[T] -> (cos, sin) float32 [T, dim/2], scaled by the YaRN attention factor."""
        freqs = positions.to(self.inv_freq.device).float()[:, None] * self.inv_freq[None, :]
        return freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, ..., dim] -> rotated x; pairs are (2i, 2i+1) when interleaved else (i, i + dim/2).

        The output keeps the input's pair layout, so q·k is the same as the reference's.
        """
        shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[1],)
        c, s = cos.view(shape), sin.view(shape)
        xf = x.float()
        if self.interleave:
            x1, x2 = xf[..., 0::2], xf[..., 1::2]
            out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        else:
            x1, x2 = xf.chunk(2, dim=-1)
            out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        return out.to(x.dtype)
