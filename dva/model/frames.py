"""The one home of frame and action conversions between the data contract and the model.

Data: frames uint8 (..., H, W, 3) HWC, actions float in the data's units (PushT: pointer targets
in [0, 512] px). Model: frames float (..., 3, H, W) in [-1, 1], actions float in [-1, 1], mapped
from DVAConfig.action_range (low, high) (PushT's: a / 256 - 1).
"""
from __future__ import annotations

import torch

ACTION_RANGE = (0.0, 512.0)  # PushT's action space (px): DVAConfig.action_range's default


def from_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"from_frames wants uint8 (..., H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    x = frames.movedim(-1, -3).float()  # (..., 3, H, W)
    return x / 127.5 - 1.0


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3) (clamped, rounded)."""
    if x.shape[-3] != 3:
        raise ValueError(f"to_frames wants (..., 3, H, W), got {tuple(x.shape)}")
    u = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return u.movedim(-3, -1).contiguous()


def norm_action(a: torch.Tensor, rng=ACTION_RANGE) -> torch.Tensor:
    """Data units [low, high] -> [-1, 1]."""
    lo, hi = rng
    return (a.float() - lo) * (2.0 / (hi - lo)) - 1.0


def denorm_action(a: torch.Tensor, rng=ACTION_RANGE) -> torch.Tensor:
    """[-1, 1] -> data units [low, high]."""
    lo, hi = rng
    return (a.float() + 1.0) * ((hi - lo) / 2.0) + lo
