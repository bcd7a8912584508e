"""Building blocks shared by the encoder, the U-Net decoder and the IDM.

Every GroupNorm(+modulation)+SiLU goes through dvakern.gn_mod_silu (one op, one switch).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

import dvakern


class GNSiLU(nn.Module):
    """silu((GN(x) * weight + bias) * (1 + scale) + shift), scale/shift optional (B, C)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, scale=None, shift=None):
        return dvakern.gn_mod_silu(x, self.weight, self.bias, scale, shift, self.groups)


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv, (modulated) GN-SiLU-conv, residual. The modulation (scale, shift per channel)
    comes from a conditioning vector (B, cond_dim) when cond_dim > 0."""

    def __init__(self, cin: int, cout: int, groups: int, cond_dim: int = 0):
        super().__init__()
        self.n1, self.c1 = GNSiLU(cin, groups), conv3(cin, cout)
        self.n2, self.c2 = GNSiLU(cout, groups), conv3(cout, cout)
        self.mod = nn.Linear(cond_dim, 2 * cout) if cond_dim else None
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        # zero-init the last conv and the modulation: every block starts as the identity (stable start)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)
        if self.mod is not None:
            nn.init.zeros_(self.mod.weight)
            nn.init.zeros_(self.mod.bias)

    def forward(self, x, cond=None):
        h = self.c1(self.n1(x))
        scale = shift = None
        if self.mod is not None:
            scale, shift = self.mod(cond).chunk(2, dim=-1)  # (B, C) each
        h = self.c2(self.n2(h, scale, shift))
        return self.skip(x) + h


def fourier_features(x: torch.Tensor, dim: int, max_freq: float = 1000.0) -> torch.Tensor:
    """x: (B, K) scalars -> (B, K * dim) sin/cos features at log-spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(max_freq), half, device=x.device, dtype=torch.float32))
    ang = x.float()[..., None] * freqs  # (B, K, half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)  # (B, K * dim)


class ScalarEmbed(nn.Module):
    """K scalars -> a cond_dim vector (Fourier features + MLP)."""

    def __init__(self, k: int, out_dim: int, fdim: int = 64, max_freq: float = 1000.0):
        super().__init__()
        self.fdim, self.max_freq = fdim, max_freq
        self.mlp = nn.Sequential(nn.Linear(k * fdim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, x):
        return self.mlp(fourier_features(x, self.fdim, self.max_freq))
