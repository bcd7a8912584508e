"""Diagnostic: the DVA's trunk as a policy, without the dream.

The package carries the action head of lever H (DVAConfig.action_aux): an MLP that reads the
expert's a_t off the transformer's context of frame t. Acting with that head, in closed loop,
separates the two halves of the DVA's route from pixels to action:
  - if the head alone is as good as the BC peer, the trunk holds the behaviour and the dream + IDM
    loses it;
  - if it is as weak as the DVA, the trunk's intent is the limit.

    python dva/experiments/head_policy.py dva/assets/dva_s dev runs/eval_dev_head.json [--delay 1]

delay 0: act on the frame just seen (head of ctx_t -> a_t), as BC does. delay 1: the DVA's lockstep
timing: a_t was decided a step ago; dream frame t+1 under it and read a_{t+1} off that dream's
context (the dream's decoder only makes the frame the trunk reads; no IDM).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dva.data.store import atomic_write_json
from dva.policy import load_planner
from dva.pusht.protocol import DEV_SEEDS, SEEDS, evaluate, parse_seeds


class HeadPolicy:
    def __init__(self, checkpoint, delay: int = 0):
        torch.set_num_threads(1)
        self.planner, _ = load_planner(checkpoint, torch.device("cpu"))
        if self.planner.model.action_head is None:
            raise SystemExit(f"{checkpoint} has no action head (DVAConfig.action_aux)")
        self.delay = delay

    def reset(self, seed):
        self.planner.reset(seed)
        self.next = None  # the action decided a step ago (delay 1)
        self.prev = None  # the action executed into the frame just seen

    @torch.inference_mode()
    def _head(self, ctx) -> np.ndarray:
        return self.planner.model.intent(ctx)[0, 0].clamp(0, 512).double().numpy()

    @torch.inference_mode()
    def act(self, obs):
        p = self.planner
        p.observe(obs["pixels"])
        if self.delay == 0 or self.next is None:  # the first step: nothing was decided before it
            a = self._head(p._ctx)
        else:
            a = self.next
        if self.delay == 1:
            m = p.model
            mark = p.cache.mark(1)
            try:
                noise = torch.randn(p._ctx.frame.shape, generator=p.gen)
                cond = torch.from_numpy(a).float()[None]
                _, ctx1 = m.dream(p.cache, p._ctx, action=cond, steps=p.sample_steps, noise=noise,
                                  observe=True, prev_action=self.prev)
                self.next = self._head(ctx1)
            finally:
                p.cache.rollback(mark)
        self.prev = torch.from_numpy(a).float()[None]
        return a


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("seeds", help="dev, protocol or START:STOP")
    ap.add_argument("out", type=Path)
    ap.add_argument("--delay", type=int, default=0, choices=(0, 1))
    a = ap.parse_args()
    seeds = {"dev": list(DEV_SEEDS), "protocol": list(SEEDS)}.get(a.seeds) or parse_seeds(a.seeds)
    res = evaluate(HeadPolicy(a.checkpoint, a.delay), seeds, workers=1)
    res = {"policy": "dva_head", "checkpoint": a.checkpoint, "delay": a.delay, "seeds": a.seeds,
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **res}
    res["episodes"] = res.pop("episodes_detail")
    res["n_episodes"] = len(res["episodes"])
    atomic_write_json(a.out, res)
    b = res["behaviour"]
    print(f"head delay {a.delay}: score {res['score']:.3f} success {res['success']:.0%} parked {b['parked']:.0%} "
          f"never touched {b['never_touched_t']:.0%} ({res['wall_seconds']:.0f} s) -> {a.out}")


if __name__ == "__main__":
    main()
