"""Open loop of a constant-velocity prior against the free dream (lost experiment, 2026-12-05).

    python dva/experiments/momentum_openloop.py CHECKPOINT   # e.g. runs/s34/ckpt

Plans 2 frames (the expert's a_t committed, a_{t+1} free) at every 5th step of data/expert_dev
and compares the free action, constant velocity (2 a_t - a_{t-1}) and their blends with the
expert's a_{t+1}; also the turns (constant velocity off by > 20 px).
"""
import sys

import numpy as np
import torch

from dva.data.store import load_dataset
from dva.policy import load_planner
from dva.pusht.render import render_frames

torch.set_num_threads(1)
planner, _ = load_planner(sys.argv[1], torch.device("cpu"))
ds = load_dataset("data/expert_dev", frames=False)
window = planner.model.cfg.window
rows = []
for e in range(len(ds.steps)):
    arr = ds.episode_arrays(e)
    S, A = arr["states"], arr["actions"]
    F = render_frames(torch.from_numpy(S).float())
    for t in range(1, len(A) - 2, 5):
        planner.reset(int(ds.seed[e]) * 1000 + t)
        for k in range(max(0, t - window + 1), t + 1):
            planner.observe(F[k].numpy())
        p = planner.plan(t, A[t:t + 1], 2, A[t - 1])
        rows.append(np.concatenate([p.actions[1], A[t + 1], A[t], A[t - 1]]))
R = np.array(rows)
dva, ex, at, am1 = R[:, 0:2], R[:, 2:4], R[:, 4:6], R[:, 6:8]
cv = np.clip(2 * at - am1, 0, 512)
err = lambda p: np.linalg.norm(p - ex, axis=1)  # noqa: E731
print(f"{len(R)} plans: dream {err(dva).mean():.2f} px, constant velocity {err(cv).mean():.2f} px")
for w in (0.1, 0.25, 0.5, 0.75, 1.0):
    print(f"w={w}: blend {err(cv + w * (dva - cv)).mean():.2f} px")
r, d = ex - cv, dva - cv
print(f"least-squares w {(r * d).sum() / (d * d).sum():.2f}")
m = err(cv) > 20
c = (r[m] * d[m]).sum(1) / np.maximum(np.linalg.norm(r[m], axis=1) * np.linalg.norm(d[m], axis=1), 1e-9)
print(f"turns ({m.sum()} plans): constant velocity {err(cv)[m].mean():.1f} px, dream {err(dva)[m].mean():.1f} px, "
      f"dream better in {(err(dva)[m] < err(cv)[m]).mean():.0%}, median cos of the corrections {np.median(c):.2f}")
