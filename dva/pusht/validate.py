"""Held-out validation of the video model and IDM: 1-step PSNR (teacher-forced context),
k-step autoregressive PSNR (dreamed frames fed back through the KV cache, as in control), IDM
action error in the 512-px action space, and a dream strip image.

PSNR is computed on uint8 frames (peak 255), per frame, then averaged. A "copy" baseline
(predict frame t+1 = frame t) is reported beside it: most of a PushT frame is static, so the
raw PSNR means little without it. Whether dreams keep the T rigid is measured directly: the IoU
of the T's pixels (nearest palette colour) in each dreamed frame with those of the real frame.
For a model with the warp head, `warp_stats` says whether its displacement follows the motion.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dva.model.dva import DVA
from dva.model.frames import from_frames, to_frames
from dva.model.idm import IDM
from dva.model.unet import warp

from .flow import T_BODY, body_labels, motion_field, moving_bodies


def t_mask(x: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> bool (..., H, W): pixels whose nearest PushT palette
    colour is the T's fill or edge. Dreams and real frames go through the same classifier, so
    the IoU of their masks measures whether the dreamed T keeps its shape and place."""
    from dva.pusht import render as R

    pal = torch.tensor([R.WHITE, R.GOAL, R.T_FILL, R.T_EDGE, R.AGENT, R.AGENT_INNER, R.WALL],
                       dtype=torch.float32, device=x.device)
    u = to_frames(x).float()  # (..., H, W, 3)
    d = ((u[..., None, :] - pal) ** 2).sum(-1)  # (..., H, W, 7)
    k = d.argmin(-1)
    return (k == 2) | (k == 3)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (..., H, W) -> (...); 0 where both are empty."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float().clamp_min(1)
    return inter / union


def t_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the T masks of pred and target (..., 3, H, W) -> (...)."""
    return mask_iou(t_mask(pred), t_mask(target))


@torch.no_grad()
def t_rigid_iou(pred: torch.Tensor, states: torch.Tensor, shift_px: float = 24.0, turn: float = 0.3,
                refine: int = 6) -> torch.Tensor:
    """Does each dreamed frame still show a rigid T, wherever it put it? pred (n, 3, H, W),
    states (n, 5) the true gym-pusht states of the same frames. Searches T poses around the true
    one: a grid of 7 x 7 x 7 over +-shift_px (512-px units) and +-turn rad, then `refine` rounds
    of a 3 x 3 x 3 pattern around the best pose so far, the step halved each round (the last:
    0.125 units and 0.0016 rad), and returns the best IoU (n,) of the dream's T mask with a
    rendered rigid T (disc at its true place). A T that moved rigidly to a wrong place scores ~1
    (rendered T's at random off-grid poses within +-15 units and +-0.25 rad: mean 0.998, min
    0.98); one that dissolved or smeared does not. The IoU is of 96-px masks, so a T off by half
    a pixel loses ~0.1: before `refine` (one finer 5-point round) the same rigid T's scored 0.93-1.0."""
    from dva.pusht import render_frames

    out = []
    for i in range(pred.shape[0]):
        dream = t_mask(pred[i:i + 1])  # (1, H, W)
        best, best_iou = states[i].double().cpu(), -1.0
        step_xy, step_th = 2 * shift_px / 6, 2 * turn / 6
        for k, r_xy, r_th in [(7, shift_px, turn)] + [(3, step_xy / 2**j, step_th / 2**j) for j in range(1, refine + 1)]:
            d = torch.linspace(-1, 1, k, dtype=torch.float64)
            dx, dy, dth = torch.meshgrid(d * r_xy, d * r_xy, d * r_th, indexing="ij")
            cand = best.expand(dx.numel(), 5).clone()  # (K, 5)
            cand[:, 2] += dx.flatten()
            cand[:, 3] += dy.flatten()
            cand[:, 4] += dth.flatten()
            iou = mask_iou(t_mask(from_frames(render_frames(cand))), dream)  # (K,)
            j = int(iou.argmax())
            if float(iou[j]) >= best_iou:
                best, best_iou = cand[j], float(iou[j])
        out.append(best_iou)
    return torch.tensor(out)


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
        pred, ctx = model.dream(cache, ctx, actions[:, t - 1], steps=steps, generator=g, observe=t + 1 < T,
                                prev_action=actions[:, t - 2] if t >= 2 else None)
        out.append(pred)
    return torch.stack(out, dim=1)


@torch.no_grad()
def validate(model: DVA | None, idm: IDM | None, x: torch.Tensor, actions: torch.Tensor, n_ctx: int = 3,
             steps: int = 4, seed: int = 0, states: torch.Tensor | None = None) -> tuple[dict, torch.Tensor | None]:
    """x: (B, T, 3, H, W) held-out sequences in [-1, 1], actions (B, T, 2) px; states (B, T, 5),
    if given, let warp_stats compare the warp head's displacement with the true motion.
    Returns (metrics, dreamed frames (B, T - n_ctx, 3, H, W) or None)."""
    B, T = x.shape[:2]
    m: dict = {}
    dreams = None
    if model is not None:
        g = torch.Generator(device=x.device).manual_seed(seed)
        ctx = model.context(x[:, :-1])  # teacher-forced: every position sees real frames
        act = actions[:, :-1].flatten(0, 1)
        with model.record() as outs:  # every decoder evaluation: its displacement and masks
            one = model.sample(ctx, act, steps=steps, generator=g,  # (B*(T-1), 3, H, W)
                               prev_action=model.prev_actions(actions[:, :-1]))
        flows = [o.disp for o in outs if o.disp is not None]  # the warp head's displacement (px) per sampler step
        rigid = model.decoder.rigid
        if rigid is not None and rigid.dense_rest and states is not None:
            # supervised body layers: does the T's layer cover the T of the next frame?
            lab = body_labels(states[:, 1:], x.shape[-1]).flatten(0, 1)
            logits = outs[-1].logits
            k = x.shape[-1] // logits.shape[-1]
            m["mask_iou_t"] = float(mask_iou(logits.argmax(1) == T_BODY, lab[:, k // 2::k, k // 2::k] == T_BODY).mean())
        target = x[:, 1:].flatten(0, 1)
        # the true motion of every frame pair (B, T-1, 2, H, W) px, for a warp head and known states
        true = motion_field(states[:, :-1], states[:, 1:], x.shape[-1]) if flows and states is not None else None
        if flows:
            m.update(warp_stats(x[:, :-1].flatten(0, 1), target, one, flows[-1],
                                None if true is None else true.flatten(0, 1)))
        m["psnr_1step"] = float(psnr(one, target).mean())
        m["psnr_1step_copy"] = float(psnr(x[:, :-1].flatten(0, 1), target).mean())
        with model.record() as outs:
            dreams = rollout(model, x, actions, n_ctx, steps, seed)
        ar_flows = [o.disp for o in outs if o.disp is not None]
        if true is not None:  # does the head still carry the true motion deep in a dream?
            agree = [motion_agreement(ar_flows[(k + 1) * steps - 1], true[:, n_ctx + k - 1])
                     for k in range(T - n_ctx)]
            m["flow_epe_ar_per_step"] = [round(e, 3) for e, _ in agree]
            m["flow_gain_ar_per_step"] = [round(gn, 3) for _, gn in agree]
        per = psnr(dreams, x[:, n_ctx:]).mean(0)  # (T - n_ctx,)
        m["psnr_ar"] = float(per.mean())
        m["psnr_ar_last"] = float(per[-1])
        m["psnr_ar_per_step"] = [round(float(p), 2) for p in per]
        m["psnr_ar_copy"] = float(psnr(x[:, n_ctx - 1:n_ctx].expand_as(x[:, n_ctx:]), x[:, n_ctx:]).mean())
        m["ar_steps"] = T - n_ctx
        iou = t_iou(dreams, x[:, n_ctx:]).mean(0)  # (T - n_ctx,)
        m["t_iou_ar_last"] = float(iou[-1])
        m["t_iou_ar_per_step"] = [round(float(v), 3) for v in iou]
        m["t_iou_ar_copy_last"] = float(t_iou(x[:, n_ctx - 1], x[:, -1]).mean())
    if idm is not None and T >= 3:
        err = []
        for t in range(1, T - 1):
            a = idm(x[:, t - 1], x[:, t], x[:, t + 1])
            err.append((a.float() - actions[:, t].float()).norm(dim=-1))
        m["idm_err_px"] = float(torch.cat(err).mean())
    return m, dreams


def motion_agreement(flow, true) -> tuple[float, float]:
    """flow: a displacement (n, 2, h, w) px; true: the true motion (n, 2, H, W) px. On the
    pixels of moving bodies: the mean end-point error and the gain, the share of the true motion
    the flow carries (sum of flow . true over sum of |true|^2: 1 = all of it, 0 = none)."""
    full = torch.nn.functional.interpolate(flow.float(), size=true.shape[-2:], mode="bilinear")
    body = moving_bodies(true)
    if not body.any():
        return float("nan"), float("nan")
    epe = (full - true).norm(dim=1)[body].mean()
    gain = (full * true).sum(1)[body].sum() / (true * true).sum(1)[body].sum()
    return float(epe), float(gain)


def warp_stats(frame, target, pred, flow, true=None) -> dict:
    """Does the warp head explain the motion? frame, target, pred (n, 3, H, W); flow: the head's
    displacement in pixels at the last sampler step (n, 2, h, w). Mean |displacement| in pixels on
    the T, off it and on the pixels that change between frame and target, and the L1 error on
    those changing pixels of copying the frame, of the warped frame alone and of the model. With
    the true motion (n, 2, H, W) px (dva.pusht.flow): on the pixels of moving bodies, its mean
    length and the mean length of the head's error (end-point error)."""
    disp = flow.float()
    full = torch.nn.functional.interpolate(disp, size=frame.shape[-2:], mode="bilinear")  # (n, 2, H, W)
    mag = full.norm(dim=1)  # (n, H, W)
    on_t = t_mask(frame)
    moving = (target - frame).abs().amax(dim=1) > 0.1  # as the training loss's motion weight
    px = moving[:, None].expand_as(frame)
    out = {"flow_px_on_t": float(mag[on_t].mean()), "flow_px_off_t": float(mag[~on_t].mean()),
           "flow_px_moving": float(mag[moving].mean()),
           "l1_moving_copy": float((frame - target).abs()[px].mean()),
           "l1_moving_warp_only": float((warp(frame, disp) - target).abs()[px].mean()),
           "l1_moving_model": float((pred - target).abs()[px].mean())}
    if true is not None:
        out["flow_px_true_bodies"] = float(true.norm(dim=1)[moving_bodies(true)].mean())
        out["flow_epe_px_bodies"], out["flow_gain_bodies"] = motion_agreement(disp, true)
    return out


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


def main(argv=None) -> int:
    """Held-out metrics of a checkpoint: `python -m dva.pusht.validate --checkpoint runs/s/ckpt`."""
    import argparse
    import json
    import sys

    from dva import checkpoint as ckpt
    from dva.data.loader import MixtureSchedule, SequenceLoader
    from dva.data.store import DatasetError

    p = argparse.ArgumentParser(prog="python -m dva.pusht.validate", description=main.__doc__)
    p.add_argument("--checkpoint", default=None, help="checkpoint stem or file (default: the packaged dva_s)")
    p.add_argument("--data", action="append", default=None, metavar="NAME=DIR",
                   help="held-out source(s) (default: the checkpoint's training sources)")
    p.add_argument("--source", default="expert", help="which source to validate on (default: expert)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="held-out fraction used in training (default: from the checkpoint, else 0.05)")
    p.add_argument("--sequences", type=int, default=32, help="held-out sequences (default: 32)")
    p.add_argument("--batch", type=int, default=8, help="sequences per forward pass (default: 8)")
    p.add_argument("--ctx", type=int, default=3, help="real context frames before the dream (default: 3)")
    p.add_argument("--dream", type=int, default=8, help="autoregressive dream length (default: 8)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's sampler_steps)")
    p.add_argument("--seed", type=int, default=0, help="seed for the held-out draw and the noise (default: 0)")
    p.add_argument("--strip", default=None, help="write a dream strip PNG here (first 2 sequences)")
    p.add_argument("--json", default=None, help="write the metrics JSON here")
    a = p.parse_args(argv)
    try:
        model, idm, meta = ckpt.load(a.checkpoint)
        if a.data:
            sources = dict(s.split("=", 1) for s in a.data)
        else:
            sources = meta.get("data_mix", {}).get("sources", {})
        if a.source not in sources:
            p.error(f"--source {a.source!r} is not among the data sources {sorted(sources)}")
        vf = a.val_fraction if a.val_fraction is not None else meta.get("train", {}).get("val_fraction", 0.05)
        loader = SequenceLoader({a.source: sources[a.source]}, seq_len=a.ctx + a.dream, batch_size=a.batch,
                                schedule=MixtureSchedule.constant({a.source: 1.0}), seed=a.seed, split="val",
                                val_fraction=vf)
    except (ckpt.CheckpointError, DatasetError) as e:
        print(f"dva.pusht.validate: error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    if a.steps is None:
        a.steps = model.cfg.sampler_steps

    rows, first = [], None
    for i in tqdm(range((a.sequences + a.batch - 1) // a.batch), desc="validate"):
        b = loader.sample(i)
        x = from_frames(b["frames"])
        m, dreams = validate(model, idm, x, b["actions"].float(), a.ctx, a.steps, a.seed + i, b["states"])
        if dreams is not None:  # per dream step: the best rigid-T fit of the dream's T pixels
            st = b["states"][:, a.ctx:].flatten(0, 1)
            m["t_rigid_iou_per_step"] = t_rigid_iou(dreams.flatten(0, 1), st).view(dreams.shape[:2]).mean(0).tolist()
        rows.append(m)
        if first is None:
            first = (x, dreams)
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    for k in ("psnr_ar_per_step", "t_iou_ar_per_step", "t_rigid_iou_per_step", "flow_epe_ar_per_step",
              "flow_gain_ar_per_step"):
        out[k] = [round(float(v), 3) for v in np.mean([r[k] for r in rows], 0)] if k in rows[0] else []
    out.update(sequences=len(rows) * a.batch, source=a.source, sampler_steps=a.steps, ctx=a.ctx, dream=a.dream,
               checkpoint=str(a.checkpoint or ckpt.DEFAULT), step=meta.get("step"))
    print(json.dumps(out, indent=1))
    if a.json:
        path = Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, path)
    if a.strip and first[1] is not None:
        dream_strip(first[0], first[1], a.ctx, a.strip)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
