"""How rigid can a warped dream stay at best? `python -m dva.pusht.warp_ceiling`

Warps held-out frames by their *true* motion (dva.pusht.flow) instead of a model's, with the
true background pasted in where the next frame shows no body, and reports the rigid-T IoU
(dva.pusht.validate.t_rigid_iou) per step. Three ways:
- `compound_<mode>`: each step warps the previous warped frame, as a dream re-warps the previous
  dream (mode: bilinear, what the model's warp does, or bicubic, which blurs less);
- `anchor_bilinear`: each step warps the last real frame once by the composed motion.
So the first two are the ceilings a warp head with perfect motion reaches under each sampling.
"""
from __future__ import annotations

import torch

from dva.model.frames import from_frames
from dva.model.unet import warp

from .flow import body_labels, motion_field
from .validate import t_rigid_iou


@torch.no_grad()
def ceilings(x: torch.Tensor, states: torch.Tensor, n_ctx: int) -> dict[str, list[float]]:
    """x: (B, T, 3, H, W) real frames in [-1, 1]; states (B, T, 5). Mean rigid-T IoU per warped
    step (T - n_ctx of them) for each way (module docstring)."""
    B, T = x.shape[:2]
    s, size = states.double(), x.shape[-1]
    out = {}
    for name, mode, anchored in (("compound_bilinear", "bilinear", False), ("compound_bicubic", "bicubic", False),
                                 ("anchor_bilinear", "bilinear", True)):
        f, frames = x[:, n_ctx - 1], []
        for t in range(n_ctx, T):
            src, a = (x[:, n_ctx - 1], n_ctx - 1) if anchored else (f, t - 1)
            w = warp(src, motion_field(s[:, a:a + 1], s[:, t:t + 1], size)[:, 0].float(), mode).clamp(-1, 1)
            f = torch.where(body_labels(s[:, t], size)[:, None] == 0, x[:, t], w)
            frames.append(f)
        d = torch.stack(frames, 1)
        out[name] = t_rigid_iou(d.flatten(0, 1), states[:, n_ctx:].flatten(0, 1)).view(B, -1).mean(0).tolist()
    return out


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    import numpy as np

    from dva.data.loader import MixtureSchedule, SequenceLoader
    from dva.data.store import DatasetError

    p = argparse.ArgumentParser(prog="python -m dva.pusht.warp_ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/expert", help="a source recorded by dva.collect (default: data/expert)")
    p.add_argument("--sequences", type=int, default=16, help="held-out sequences (default: 16)")
    p.add_argument("--batch", type=int, default=8, help="sequences per batch (default: 8)")
    p.add_argument("--ctx", type=int, default=3, help="real frames before the warped ones (default: 3)")
    p.add_argument("--dream", type=int, default=8, help="warped steps (default: 8)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="held-out fraction (default: 0.05, as dva.train)")
    a = p.parse_args(argv)
    for k in ("sequences", "batch", "ctx", "dream"):
        if getattr(a, k) < 1:
            p.error(f"--{k} must be >= 1, got {getattr(a, k)}")
    try:  # the same held-out sequences as `python -m dva.pusht.validate --source expert --seed 0`
        loader = SequenceLoader({"src": a.data}, seq_len=a.ctx + a.dream, batch_size=a.batch,
                                schedule=MixtureSchedule.constant({"src": 1.0}), seed=0, split="val",
                                val_fraction=a.val_fraction)
    except DatasetError as e:
        print(f"dva.pusht.warp_ceiling: error: {e}", file=sys.stderr)
        return 2
    rows = []
    for i in range((a.sequences + a.batch - 1) // a.batch):
        b = loader.sample(i)
        rows.append(ceilings(from_frames(b["frames"]), b["states"], a.ctx))
    out = {k: [round(float(v), 3) for v in np.mean([r[k] for r in rows], 0)] for k in rows[0]}
    out.update(sequences=len(rows) * a.batch, data=a.data)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
