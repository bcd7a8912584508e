"""GroupNorm + per-sample channel modulation + SiLU:  y = silu(GN(x) * w + b) * ... see below.

    y = silu((GN(x) * weight + bias) * (1 + scale) + shift)

x: (B, C, H, W), contiguous NCHW or channels_last (the output keeps x's memory format);
weight, bias: (C,); scale, shift: (B, C) or None (no modulation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import use_triton


def gn_mod_silu_ref(x, weight, bias, scale, shift, num_groups: int, eps: float = 1e-5):
    h = F.group_norm(x.float(), num_groups, weight.float(), bias.float(), eps)
    if scale is not None:
        h = h * (1 + scale.float()[:, :, None, None]) + shift.float()[:, :, None, None]
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    return F.silu(h).to(x.dtype).contiguous(memory_format=fmt)


def gn_mod_silu(x, weight, bias, scale, shift, num_groups: int, eps: float = 1e-5):
    if use_triton(x):
        raise NotImplementedError("triton gn_mod_silu not wired yet")
    return gn_mod_silu_ref(x, weight, bias, scale, shift, num_groups, eps)
