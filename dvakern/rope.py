"""Rotary position embedding over the frame index (shared by the model and the attention ops).

Angles are p * base^(-2i/D) on pairs (x[..., i], x[..., i + D/2]) ("rotate half" layout).
Only differences of positions matter for attention scores, which is what lets the ring KV
cache store un-rotated keys and rotate them by their (small) age at read time.
"""
from __future__ import annotations

import torch


def rope_cos_sin(pos: torch.Tensor, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32):
    """pos: (...,) float or int positions -> cos, sin of shape (..., dim/2), in dtype (fp32 default)."""
    inv = base ** (-torch.arange(0, dim // 2, device=pos.device, dtype=dtype) * 2.0 / dim)
    ang = pos.to(dtype)[..., None] * inv
    return ang.cos(), ang.sin()


def apply_rope_ref(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x: (B, H, S, D); pos: (S,) positions of the S tokens. Returns x rotated, in x.dtype."""
    d = x.shape[-1]
    xc = x.to(torch.promote_types(x.dtype, torch.float32))
    cos, sin = rope_cos_sin(pos, d, base, xc.dtype)  # (S, D/2)
    x1, x2 = xc.chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)
