"""Start states for a 'finish' source (issue 21, stop 30): the T a few px from the goal, the disc nearby.

45 of the package's 100 development episodes park with the T 2.6-4.9 px (mean corner distance)
from the goal, where success needs about 2.4 (docs/policy.md). This writes N start states with the
T's pose error drawn in [LO, HI] px and the disc 100-170 px from the T's centroid (its corners
are 75 px from it, the disc's radius 15), for
`python -m dva.collect --policy expert --start-states OUT.npz`.

    python dva/experiments/finish_starts.py OUT.npz N [LO HI SEED]
"""
import sys

import numpy as np

from dva.pusht.sim import GOAL_POSE, vertex_error

out, n = sys.argv[1], int(sys.argv[2])
lo, hi = (float(sys.argv[3]), float(sys.argv[4])) if len(sys.argv) > 4 else (2.5, 10.0)
rng = np.random.default_rng(int(sys.argv[5]) if len(sys.argv) > 5 else 0)
states = []
while len(states) < n:
    pose = GOAL_POSE + rng.normal(0, [6.0, 6.0, np.radians(4.0)])
    if not lo <= vertex_error(pose) <= hi:
        continue
    c, s = np.cos(pose[2]), np.sin(pose[2])
    centroid = pose[:2] + np.array([-s * 45.0, c * 45.0])  # local (0, 45): between the bar and the stem
    r, phi = rng.uniform(100, 170), rng.uniform(0, 2 * np.pi)
    agent = centroid + r * np.array([np.cos(phi), np.sin(phi)])
    if not (20 <= agent).all() or not (agent <= 492).all():
        continue
    states.append([*agent, *pose])
states = np.array(states)
np.savez(out, states=states, agent_vel=np.zeros((n, 2)))
print(f"{out}: {n} starts, pose error {np.percentile(vertex_error(states[:, 2:]), [10, 50, 90]).round(1)} px (p10/50/90)")
