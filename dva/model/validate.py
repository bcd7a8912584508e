"""Held-out validation of the video model and IDM: 1-step PSNR (teacher-forced context),
k-step autoregressive PSNR (dreamed frames fed back through the KV cache, as in control), IDM
action error in the 512-px action space, and a dream strip image.

PSNR is computed on uint8 frames (peak 255), per frame, then averaged. A "copy" baseline
(predict frame t+1 = frame t) is reported beside it: most of a PushT frame is static, so the
raw PSNR means little without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .dva import DVA
from .frames import to_frames
from .idm import IDM


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target float (..., 3, H, W) in [-1, 1] -> PSNR (...) in dB on the uint8 frames."""
    a, b = to_frames(pred).float(), to_frames(target).float()
    mse = ((a - b) ** 2).flatten(-3).mean(-1).clamp_min(1e-3)
    return 10 * torch.log10(255.0**2 / mse)


@torch.no_grad()
def rollout(model: DVA, x: torch.Tensor, actions: torch.Tensor, n_ctx: int, steps: int, seed: int = 0):
    """Observe real frames 0..n_ctx-1, then dream frames n_ctx.. autoregressively, conditioned on
    the true actions, feeding each dream back through the cache. x: (B, T, 3, H, W).
    Returns dreamed frames (B, T - n_ctx, 3, H, W)."""
    B, T = x.shape[:2]
    g = torch.Generator(device=x.device).manual_seed(seed)
    cache = model.init_cache(B, x.device)
    for t in range(n_ctx):
        ctx = model.observe(cache, x[:, t])
    out = []
    for t in range(n_ctx, T):
        pred = model.sample(ctx, actions[:, t - 1], steps=steps, generator=g)
        out.append(pred)
        if t + 1 < T:
            ctx = model.observe(cache, pred)
    return torch.stack(out, dim=1)


@torch.no_grad()
def validate(model: DVA | None, idm: IDM | None, x: torch.Tensor, actions: torch.Tensor, n_ctx: int = 3,
             steps: int = 4, seed: int = 0) -> tuple[dict, torch.Tensor | None]:
    """x: (B, T, 3, H, W) held-out sequences in [-1, 1], actions (B, T, 2) px.
    Returns (metrics, dreamed frames (B, T - n_ctx, 3, H, W) or None)."""
    B, T = x.shape[:2]
    m: dict = {}
    dreams = None
    if model is not None:
        g = torch.Generator(device=x.device).manual_seed(seed)
        ctx = model.context(x[:, :-1])  # teacher-forced: every position sees real frames
        act = actions[:, :-1].flatten(0, 1)
        one = model.sample(ctx, act, steps=steps, generator=g)  # (B*(T-1), 3, H, W)
        target = x[:, 1:].flatten(0, 1)
        m["psnr_1step"] = float(psnr(one, target).mean())
        m["psnr_1step_copy"] = float(psnr(x[:, :-1].flatten(0, 1), target).mean())
        dreams = rollout(model, x, actions, n_ctx, steps, seed)
        per = psnr(dreams, x[:, n_ctx:]).mean(0)  # (T - n_ctx,)
        m["psnr_ar"] = float(per.mean())
        m["psnr_ar_last"] = float(per[-1])
        m["psnr_ar_per_step"] = [round(float(p), 2) for p in per]
        m["psnr_ar_copy"] = float(psnr(x[:, n_ctx - 1:n_ctx].expand_as(x[:, n_ctx:]), x[:, n_ctx:]).mean())
        m["ar_steps"] = T - n_ctx
    if idm is not None and T >= 3:
        err = []
        for t in range(1, T - 1):
            a = idm(x[:, t - 1], x[:, t], x[:, t + 1])
            err.append((a.float() - actions[:, t].float()).norm(dim=-1))
        m["idm_err_px"] = float(torch.cat(err).mean())
    return m, dreams


def dream_strip(x: torch.Tensor, dreams: torch.Tensor, n_ctx: int, path, rows: int = 2) -> Path:
    """Save a PNG: for each of `rows` sequences, the real frames (top) above the context frame
    followed by the dreamed ones (bottom). Written atomically."""
    import imageio.v3 as iio

    real = to_frames(x[:rows, n_ctx - 1:]).cpu().numpy()  # (R, K+1, H, W, 3)
    fake = to_frames(torch.cat([x[:rows, n_ctx - 1:n_ctx], dreams[:rows]], dim=1)).cpu().numpy()
    R, K, H, W, _ = real.shape
    pad = 2
    img = np.full((R * (2 * H + 3 * pad), K * (W + pad), 3), 255, dtype=np.uint8)
    for r in range(R):
        y0 = r * (2 * H + 3 * pad)
        for k in range(K):
            x0 = k * (W + pad)
            img[y0:y0 + H, x0:x0 + W] = real[r, k]
            img[y0 + H + pad:y0 + 2 * H + pad, x0:x0 + W] = fake[r, k]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.png")
    iio.imwrite(tmp, img)
    os.replace(tmp, path)
    return path
