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

from dva.loop import make_env, run_realtime
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


def test_package_act(benchmark):
    """The packaged checkpoint's act() at the default lockstep timing (delay 0: observe the real
    frame, dream one frame, read it with the IDM), on real frames of an episode: the time
    dva.policy.PLAN_LATENCY_MS cites (how late in its step a DVA action lands). env.step runs
    between calls, untimed."""
    from dva.policy import PACKAGED_CHECKPOINT, load_planner
    from dva.pusht.env import hold_substeps_for

    env = make_env()
    planner, _ = load_planner(PACKAGED_CHECKPOINT, DEV)
    policy = DVAPolicy(planner)
    policy.reset(100000)
    state = {"obs": env.reset(100000)[0], "a": None}

    def advance():  # untimed: the env moves on with the last action
        if state["a"] is not None:
            state["obs"] = env.step(state["a"], hold_substeps_for(policy.latency_ms))[0]
        return (state["obs"],), {}

    def act(obs):
        state["a"] = policy.act(obs)

    for _ in range(3):
        act(advance()[0][0])
    benchmark.extra_info.update(checkpoint="dva/assets/dva_s", batch=1, dtype="fp32", mode="lockstep delay 0",
                                sample_steps=planner.sample_steps, free_action=planner.free_action,
                                items_per_call=1, unit="actions")
    benchmark.pedantic(act, setup=advance, rounds=40, iterations=1)
