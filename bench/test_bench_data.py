"""Data-engine speed: env steps/s (state-only and pixels), collection frames/s per worker,
renderer frames/s (CPU; CUDA when present). Rates = items_per_call / median.
Run: `python -m pytest bench/test_bench_data.py`. On an oversubscribed CPU (more runnable
processes than cores) set OMP_WAIT_POLICY=PASSIVE: OpenMP's spinning workers otherwise slow
the renderer's many small ops ~40x (measured on the shared 2-core box: 38 vs 1,449 frames/s).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dva.pusht import render_frames
from dva.pusht.env import PushTEnv

STEPS = 50


def _states(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([50.0, 50.0, 100.0, 100.0, 0.0], dtype=torch.float64)
    span = torch.tensor([412.0, 412.0, 300.0, 300.0, 2 * np.pi], dtype=torch.float64)
    return lo + torch.rand(n, 5, generator=g, dtype=torch.float64) * span


@pytest.mark.parametrize("mode", ["state", "pixels"])
def test_env_steps(benchmark, mode):
    env = PushTEnv(pixels=mode == "pixels")
    actions = np.random.default_rng(0).uniform(50, 460, (STEPS, 2))

    def run():
        env.reset(0)
        for a in actions:
            env.step(a)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(mode=mode, items_per_call=STEPS, unit="env steps")


@pytest.mark.parametrize("policy", ["random", "goal"])
def test_collection_per_worker(benchmark, policy):
    """One worker's collection loop (policy + state-only env + recording), 100-step episodes."""
    from dva.collect import collect_episode
    from dva.pusht.policies import make_policy

    env, pol = PushTEnv(pixels=False), make_policy(policy)
    seeds = iter(range(10**6))
    ep = benchmark.pedantic(lambda: collect_episode(pol, env, next(seeds), 100), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(policy=policy, workers=1, items_per_call=ep.steps + 1, unit="frames")


@pytest.mark.parametrize("batch", [256])
def test_render_cpu(benchmark, batch):
    s = _states(batch)
    render_frames(s[:8])
    benchmark.pedantic(render_frames, args=(s,), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(batch=batch, items_per_call=batch, unit="frames",
                                threads=torch.get_num_threads())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (unmeasured here)")
@pytest.mark.parametrize("batch", [16384])
def test_render_cuda(benchmark, batch):
    s = _states(batch).cuda()
    render_frames(s)

    def run():
        render_frames(s)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    benchmark.extra_info.update(batch=batch, items_per_call=batch, unit="frames")
