"""Where the disc goes: the first 60 steps of `dva` episodes (lost-experiment diagnostic, 2026-12-05).

    python dva/experiments/trace_episode.py CHECKPOINT SEED [SEED ...]
"""
import sys

import numpy as np
import torch

from dva.policy import DVAPolicy
from dva.pusht.protocol import run_episode

torch.set_num_threads(1)
pol = DVAPolicy(checkpoint=sys.argv[1], device="cpu")
for seed in map(int, sys.argv[2:]):
    res, tr = run_episode(pol, seed, max_steps=60, record=True)
    S, A = np.array(tr["states"]), np.array(tr["actions"])
    print("seed", seed, "T at", S[0, 2:].round(0))
    for t in range(0, 60, 3):
        print(f"{t:3d} disc {S[t, :2].round(0)} action {A[t].round(0)} |action - disc| {np.linalg.norm(A[t] - S[t, :2]):5.1f}")
