"""Measure dva.pusht.render_frames against gym-pusht's own `pixels` observation.

    python -m dva.pusht.render_check --resets 1000 --rollout 1000
"""
from __future__ import annotations

import numpy as np
import torch

from dva.pusht.env import PushTEnv
from dva.pusht.render import render_frames


def compare_with_gym(n_resets: int = 1000, n_rollout: int = 1000, seed: int = 0) -> dict:
    """Render gym-pusht states and compare with gym-pusht's own `pixels` observation.

    States: n_resets seeded random starts (gym-pusht's reset) plus n_rollout states along a
    pointer that keeps aiming at the block (so the disc touches and pushes the T).
    """
    env = PushTEnv(pixels=True)
    states, pixels, contact = [], [], []
    for s in range(n_resets):
        obs, _ = env.reset(seed * 1_000_000 + s)
        states.append(obs["state"]), pixels.append(obs["pixels"])
        contact.append(env.gym_env.n_contact_points > 0)  # counted by gym-pusht's collision handler
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(12345 + seed)
    target = obs["state"][2:4]
    for t in range(n_rollout):
        if t % 25 == 0:
            target = obs["state"][2:4] + rng.normal(0, 40, 2)
        obs, *_ = env.step(np.clip(target + rng.normal(0, 10, 2), 0, 512))
        states.append(obs["state"]), pixels.append(obs["pixels"])
        contact.append(env.gym_env.n_contact_points > 0)
    states, pixels, contact = np.stack(states), np.stack(pixels), np.array(contact)
    mine = render_frames(torch.from_numpy(states)).numpy()
    err = np.abs(mine.astype(np.int16) - pixels.astype(np.int16))
    return {"states": len(states), "mae_per_channel": float(err.mean()) / 255,
            "within_8_of_255": float((err <= 8).mean()), "exact": float((err == 0).mean()),
            "exact_frames": float((err.reshape(len(err), -1).max(1) == 0).mean()),
            "exact_frames_no_contact": float((err[~contact].reshape((~contact).sum(), -1).max(1) == 0).mean()),
            "contact_frames": int(contact.sum()),
            "max_abs_error": int(err.max()), "states_array": states, "pixels_array": pixels}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dva.pusht.render_check",
                                 description="Measure render_frames against gym-pusht's pixels observation.")
    ap.add_argument("--resets", type=int, default=1000, help="random starts (gym-pusht reset seeds)")
    ap.add_argument("--rollout", type=int, default=1000, help="states along a pushing rollout (contacts)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the state sample")
    a = ap.parse_args()
    r = compare_with_gym(a.resets, a.rollout, a.seed)
    print(f"{r['states']} states: MAE {r['mae_per_channel'] * 255:.4f}/255 per channel, "
          f"{100 * r['within_8_of_255']:.4f}% of values within 8/255, {100 * r['exact']:.4f}% exact, "
          f"{100 * r['exact_frames']:.2f}% of frames bit-exact ({100 * r['exact_frames_no_contact']:.2f}% of the "
          f"{r['states'] - r['contact_frames']} without disc-T contact), max error {r['max_abs_error']}/255")
