"""Stop 36 (docs/control.md, the stop-35 package's real-time rows): what real-time plans cost.

    python dva/experiments/rt_trace.py isolated        # one plan of h = 1, 2, 4, 7 frames, no control loop
    python dva/experiments/rt_trace.py trace [RUNS]    # real-time episodes, every plan that took > 120 ms or h > 2
    python dva/experiments/rt_trace.py padded MS STEPS SEED [SEED ...] [LAND_BY]
        # real-time episodes with each dreamed frame padded to MS ms (0: none), one JSON line each;
        # stop 37's scheduler A/B ran it from this tree and, with PYTHONPATH, from a checkout of 27e8b06

`trace` logs each plan as Leapfrog.record_latency receives it: when, its horizon, its cost from
launch, the observing part of it, and how long its frame had waited. Needs an idle machine.
"""
import sys
import time

import numpy as np
import torch

from dva.leapfrog import Leapfrog, LeapfrogConfig
from dva.loop import make_env, run_realtime
from dva.policy import load_planner

torch.set_num_threads(1)
planner, _ = load_planner("dva/assets/dva_s.safetensors", "cpu")
env = make_env()


def isolated():
    obs, _ = env.reset(100000)
    planner.reset(100000)
    for _ in range(8):
        planner.observe(obs["pixels"])
    for h in (1, 2, 4, 7):
        t = []
        for _ in range(6):
            t0 = time.perf_counter()
            planner.observe(obs["pixels"])
            t1 = time.perf_counter()
            planner.plan(0, np.zeros((0, 2)), h)
            t.append((t1 - t0, time.perf_counter() - t1))
        obs_ms, plan_ms = np.median(t, axis=0) * 1e3
        print(f"h {h}: observe a frame {obs_ms:.1f} ms, plan {plan_ms:.1f} ms ({plan_ms / h:.1f} per frame)")


def trace(runs):
    log, record = [], Leapfrog.record_latency

    def logged(self, seconds, horizon, fixed_s=0.0, waited_s=0.0, observed=1):
        log.append((time.perf_counter(), horizon, seconds, fixed_s, waited_s, observed))
        return record(self, seconds, horizon, fixed_s, waited_s, observed)

    Leapfrog.record_latency = logged
    for run in range(runs):
        log.clear()
        r, _ = run_realtime(env, planner, LeapfrogConfig(), seed=100000, max_steps=300)
        print(f"run {run}: score {r['score']:.3f}, {r['steps']} steps, {r['deadline_misses']} misses, "
              f"plans p50 {r['latency_ms']['p50']:.0f} ms, max {r['latency_ms']['max']:.0f} ms")
        t0 = log[0][0]
        for t, h, total, fixed, waited, observed in log:
            if total > 0.12 or h > 2:
                print(f"  t {t - t0:5.2f} s  h {h}  {total * 1e3:4.0f} ms from launch, observing {observed} frames "
                      f"{fixed * 1e3:3.0f} ms, its frame waited {waited * 1e3:3.0f} ms")


def padded(per_frame_ms, steps, seeds, land_by=None):
    """The package made deliberately slow, as tests/test_control_episode.py's SlowModel does."""
    import json

    from dva.policy import DVAPlanner

    class Slow:
        def __init__(self, m):
            self.m = m

        def __getattr__(self, k):
            return getattr(self.m, k)

        def dream(self, *a, **k):
            t0 = time.perf_counter()
            out = self.m.dream(*a, **k)
            time.sleep(max(0.0, per_frame_ms / 1e3 - (time.perf_counter() - t0)))
            return out

    slow = DVAPlanner(Slow(planner.model), planner.idm, "cpu", planner.cfg)
    cfg = LeapfrogConfig() if land_by is None else LeapfrogConfig(land_by=land_by)
    for seed in seeds:
        r, _ = run_realtime(env, slow, cfg, seed, steps)
        print(json.dumps({"seed": seed, "per_frame_ms": per_frame_ms, "steps": r["steps"], "score": round(r["score"], 3),
                          "misses": r["deadline_misses"], "plans": r["plans"], "h_p50": r["horizon"]["p50"],
                          "h_max": r["horizon"]["max"], "lat_p50": round(r["latency_ms"]["p50"]),
                          "lat_p99": round(r["latency_ms"]["p99"]), "hold": round(r["hold_substeps_mean"], 2)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "padded":
        rest = sys.argv[2:]
        land_by = float(rest.pop()) if "." in rest[-1] else None
        padded(float(rest[0]), int(rest[1]), [int(s) for s in rest[2:]], land_by)
    else:
        isolated() if sys.argv[1] == "isolated" else trace(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
