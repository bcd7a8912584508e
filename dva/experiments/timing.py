"""Issue 21, stop 33 (docs/history.md, "Dreams conditioned on the model's own intent"): the timing
diagnostics behind that section's table, all with actions landing at once (latency 0, as every
number before stop 34). Each runs the protocol's episodes on SEEDS in this process (one worker;
run halves side by side) and writes a dva.eval-style JSON.

    python dva/experiments/timing.py bc-delay1 CKPT SEEDS OUT     # BC at the DVA's old lockstep timing
    python dva/experiments/timing.py stale-intent CKPT SEEDS OUT  # delay 1, the free frame under the real frame's a_t

The third diagnostic of that table, the intent DVA acting on the frame it just saw at once, is now
`python -m dva.eval --policy dva --checkpoint CKPT --free-action intent --delay 0 --latency-ms 0`.
bc-delay1: at step t BC executes the
action its chunk predicted at step t-1 for step t (chunk_{t-1}[1]); step 0 acts at once, as the DVA's
first plan does. stale-intent: delay 1, but the free frame's intent is the head's reading of the
last real frame's context (its a_t, one step stale) instead of the dreamed frame's.
"""
from __future__ import annotations

import sys
import time

import torch

from dva.bc import BCPolicy
from dva.data.store import atomic_write_json
from dva.policy import DVAPolicy, LockstepConfig
from dva.pusht.protocol import evaluate, parse_seeds


class BCDelay1(BCPolicy):
    def reset(self, seed):
        super().reset(seed)
        self.last = None

    def act(self, obs):
        cur = obs["pixels"]
        prev = cur if self.prev is None else self.prev
        self.prev = cur
        chunk = self.predict(prev, cur)
        a = chunk[0] if self.last is None else self.last[1]
        self.last = chunk
        return a


class StaleIntent:
    """A DVA whose intent(ctx) is the head's reading of the planner's last real frame, whatever ctx."""

    def __init__(self, model, planner):
        self._m, self._p = model, planner

    def __getattr__(self, k):
        return getattr(self._m, k)

    def intent(self, ctx):
        return self._m.intent(self._p._ctx)


def main():
    what, ckpt, seeds, out = sys.argv[1:5]
    torch.set_num_threads(1)
    if what == "bc-delay1":
        pol = BCDelay1(ckpt)
    elif what == "stale-intent":
        pol = DVAPolicy(cfg=LockstepConfig(delay=1), checkpoint=ckpt, free_action="intent", device="cpu")
        pol.planner.model = StaleIntent(pol.planner.model, pol.planner)
    else:
        raise SystemExit(f"unknown diagnostic {what!r}: bc-delay1 or stale-intent")
    r = evaluate(pol, parse_seeds(seeds), workers=1, progress=False, latency_ms=0.0)
    r = {"policy": what, "checkpoint": ckpt, "seeds": seeds,
         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **r}
    r["episodes"] = r.pop("episodes_detail")
    r["n_episodes"] = len(r["episodes"])
    atomic_write_json(out, r)
    print(f"{what}: score {r['score']:.3f} success {r['success']:.0%} {r['behaviour']} -> {out}")


if __name__ == "__main__":
    main()
