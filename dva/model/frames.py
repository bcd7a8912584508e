"""The one home of frame and action conversions between the data contract and the model.

Data: frames uint8 (..., H, W, 3) HWC, actions float pixel targets in [0, 512].
Model: frames float (..., 3, H, W) in [-1, 1], actions float in [-1, 1] (a / 256 - 1).
"""
from __future__ import annotations

import torch

ACTION_SCALE = 256.0  # PushT's action space is [0, 512] px


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


def norm_action(a: torch.Tensor) -> torch.Tensor:
    """Pixel units [0, 512] -> [-1, 1]."""
    return a.float() / ACTION_SCALE - 1.0


def denorm_action(a: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> pixel units [0, 512]."""
    return (a.float() + 1.0) * ACTION_SCALE
