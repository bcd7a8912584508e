"""Closed-loop control: step rate and inference latency of the DVA policy on the real gym-pusht.

lockstep  one benchmark call = one control step (observe the real frame, plan with the default
          lockstep leapfrog settings, IDM, env.step); steps/s = 1 / median.
realtime  one call = a short episode with the env on the 10 Hz wall clock and inference in a
          thread; latency p50/p99, deadline misses and the achieved rate go to extra_info.

Weights are random (cost does not depend on them); batch 1, fp32, 4 sampler steps, 1 torch thread
on CPU (batch-1 inference on 2 cores was many times slower with 2 threads: docs/control.md).
"""
from __future__ import annotations

import pytest
import torch

from dva.control import make_env, run_realtime
from dva.leapfrog import LeapfrogConfig
from dva.model.config import preset
from dva.model.dva import DVA
from dva.model.idm import IDM
from dva.policy import DVAPlanner, DVAPolicy

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
PRESETS = ["s", "m"] if CUDA else ["tiny", "s"]


def _planner(name):
    torch.manual_seed(0)
    cfg = preset(name)
    return DVAPlanner(DVA(cfg).to(DEV).eval(), IDM(cfg).to(DEV).eval(), DEV)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.mark.parametrize("name", PRESETS)
def test_control_lockstep(benchmark, name):
    env = make_env()
    policy = DVAPolicy(_planner(name))
    policy.reset(100000)
    state = {"obs": env.reset(100000)[0]}

    def step():
        a = policy.act(state["obs"])
        state["obs"] = env.step(a)[0]

    for _ in range(3):
        step()
    benchmark.extra_info.update(preset=name, batch=1, steps=4, dtype="fp32", mode="lockstep",
                                items_per_call=1, unit="control steps", horizon=policy.cfg.horizon)
    benchmark.pedantic(step, rounds=20, iterations=1)
    lat = policy.leap.stats()["latency_ms"]
    benchmark.extra_info.update(plan_latency_p50_ms=lat["p50"], plan_latency_p99_ms=lat["p99"])


@pytest.mark.parametrize("name", PRESETS)
def test_control_realtime(benchmark, name):
    env, planner = make_env(), _planner(name)
    n = 30
    out = {}

    def episode():
        out["rec"], _ = run_realtime(env, planner, LeapfrogConfig(), seed=100000, max_steps=n)

    benchmark.pedantic(episode, rounds=1, iterations=1)
    rec = out["rec"]
    benchmark.extra_info.update(preset=name, batch=1, steps=4, dtype="fp32", mode="realtime", env_steps=n,
                                control_hz=rec["control_hz"], deadline_misses=rec["deadline_misses"],
                                plan_latency_p50_ms=rec["latency_ms"]["p50"],
                                plan_latency_p99_ms=rec["latency_ms"]["p99"], horizon=rec["horizon"])
