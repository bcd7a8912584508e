"""The true motion between two PushT frames, from their states: a training target for the warp head.

A frame is two rigid bodies on a static scene (the T and the disc), so the displacement of
every pixel from frame t to frame t+1 follows from the two states exactly: a pixel of the T at
t+1 maps back through the T's two poses, a pixel of the disc by the disc's shift, and every
other pixel stays. Why supervise with it: trained only through the image loss, the warp head of
`s` moved the pushed T by less than half its true motion (0.46 px on the T, 1.10 px on moving
pixels; docs/history.md, stage 5) and left the rest to the residual, which repaints, blurs and
bends the T over autoregressive steps. Only the training loss reads states; the model never does.
"""
from __future__ import annotations

import torch

from dva.model.dva import MOVED_PX

from .render import AGENT_RADIUS, CANVAS, T_BAR, T_STEM

# the T's edges are drawn as fat segments of radius 2 canvas px around its outline
_EDGE = 2.0


def _box(local) -> tuple[float, float, float, float]:
    xs, ys = [v[0] for v in local], [v[1] for v in local]
    return min(xs) - _EDGE, max(xs) + _EDGE, min(ys) - _EDGE, max(ys) + _EDGE


_BOXES = (_box(T_BAR), _box(T_STEM))


def moving_bodies(field: torch.Tensor) -> torch.Tensor:
    """(..., 2, H, W) motion in px -> bool (..., H, W): the pixels of a body that moved (the flow
    loss weighs them up, dva.pusht.validate measures the warp head on them)."""
    return field.norm(dim=-3) > MOVED_PX


def _grid(size: int, device):
    """Pixel centres of a size x size frame in canvas units: X (1, 1, size), Y (1, size, 1)."""
    c = (torch.arange(size, device=device, dtype=torch.float64) + 0.5) * (CANVAS / size)
    return c.view(1, 1, size), c.view(1, size, 1)


def _col(s, i):
    return s[:, i].view(-1, 1, 1)


def _bodies(b: torch.Tensor, X, Y):
    """Which pixels the T and the disc cover under states b (n, 5), and each pixel's T body
    coordinates (u, v). Returns on_t, on_disc (n, size, size) bool, u, v."""
    cos1, sin1 = _col(b, 4).cos(), _col(b, 4).sin()
    rx, ry = X - _col(b, 2), Y - _col(b, 3)
    u, v = cos1 * rx + sin1 * ry, -sin1 * rx + cos1 * ry
    on_t = torch.zeros_like(u, dtype=torch.bool)
    for x0, x1, y0, y1 in _BOXES:
        on_t |= (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)
    on_disc = (X - _col(b, 0)) ** 2 + (Y - _col(b, 1)) ** 2 <= AGENT_RADIUS**2
    return on_t, on_disc, u, v


# the labels of body_labels; dva.model.unet.RigidLayers' layers in this order when supervised
STATIC, T_BODY, DISC = 0, 1, 2


def body_labels(states: torch.Tensor, size: int = 96) -> torch.Tensor:
    """Which body each pixel shows: states (..., 5) -> int64 (..., size, size), STATIC for the
    static scene, T_BODY for the T, DISC for the disc (drawn on top of the T), at pixel centres."""
    if states.shape[-1] != 5:
        raise ValueError(f"states must be (..., 5), got {tuple(states.shape)}")
    lead = states.shape[:-1]
    X, Y = _grid(size, states.device)
    on_t, on_disc, _, _ = _bodies(states.reshape(-1, 5).double(), X, Y)
    lab = torch.where(on_disc, DISC, torch.where(on_t, T_BODY, STATIC))
    return lab.reshape(*lead, size, size)


def motion_field(s0: torch.Tensor, s1: torch.Tensor, size: int = 96) -> torch.Tensor:
    """Backward displacement from frame 0 to frame 1: frame1(p) ~ frame0(p + d(p)), the
    convention of dva.model.unet.warp. s0, s1: (..., 5) gym-pusht states [agent x, agent y,
    block x, block y, block angle] of the two frames. Returns float32 (..., 2, size, size):
    (dx, dy) in pixels of the size x size frame, at pixel centres; the disc is on top of the T
    (as drawn), every pixel of neither body at frame 1 has d = 0 (what the T uncovers too)."""
    if s0.shape != s1.shape or s0.shape[-1] != 5:
        raise ValueError(f"states must both be (..., 5), got {tuple(s0.shape)} and {tuple(s1.shape)}")
    lead = s0.shape[:-1]
    a, b = s0.reshape(-1, 5).double(), s1.reshape(-1, 5).double()
    X, Y = _grid(size, a.device)
    on_t, on_disc, u, v = _bodies(b, X, Y)  # under the poses of frame 1
    cos0, sin0 = _col(a, 4).cos(), _col(a, 4).sin()
    tx = _col(a, 2) + cos0 * u - sin0 * v - X  # where that body point was at frame 0, minus p
    ty = _col(a, 3) + sin0 * u + cos0 * v - Y
    zero = torch.zeros_like(tx)
    dx = torch.where(on_disc, _col(a, 0) - _col(b, 0), torch.where(on_t, tx, zero))
    dy = torch.where(on_disc, _col(a, 1) - _col(b, 1), torch.where(on_t, ty, zero))
    return (torch.stack([dx, dy], 1) / (CANVAS / size)).float().reshape(*lead, 2, size, size)
