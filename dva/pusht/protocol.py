"""The evaluation protocol (DESIGN.md section 4), in code.

50 episodes on env seeds 100000..100049, at most 300 steps at 10 Hz, 96x96 observations.
score = mean over episodes of max_t clip(coverage_t / 0.95, 0, 1); success = fraction of
episodes whose coverage exceeds 0.95. An episode ends at success (gym-pusht terminates there).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dva.pusht.env import SUCCESS_COVERAGE, PushTEnv, gym_pusht_version

SEEDS = tuple(range(100000, 100050))
MAX_STEPS = 300


def parse_seeds(text: str) -> list[int]:
    """'100000:100050' (half-open range) or '1,2,3' -> list of ints."""
    try:
        if ":" in text:
            a, b = text.split(":")
            seeds = list(range(int(a), int(b)))
        else:
            seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected 'START:STOP' or 'a,b,c', got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds: {text!r} selects no seeds")
    return seeds


def episode_score(max_coverage: float) -> float:
    return float(np.clip(max_coverage / SUCCESS_COVERAGE, 0.0, 1.0))


def summarize(max_coverages) -> dict:
    """Protocol metrics from per-episode max coverages."""
    m = np.asarray(max_coverages, dtype=np.float64)
    if m.size == 0:
        raise ValueError("summarize: no episodes")
    return {"score": float(np.mean(np.clip(m / SUCCESS_COVERAGE, 0.0, 1.0))),
            "success": float(np.mean(m > SUCCESS_COVERAGE)), "episodes": int(m.size)}


def episode_trace_metrics(coverage_trace) -> dict:
    """max coverage, success and steps-to-success of one episode's coverage trace (per step)."""
    c = np.asarray(coverage_trace, dtype=np.float64)
    hit = np.nonzero(c > SUCCESS_COVERAGE)[0]
    return {"max_coverage": float(c.max()) if c.size else 0.0, "success": bool(hit.size),
            "success_step": int(hit[0]) + 1 if hit.size else None}


@dataclass
class EpisodeResult:
    seed: int
    max_coverage: float
    steps: int
    success: bool
    seconds: float

    def as_dict(self) -> dict:
        return {"seed": self.seed, "max_coverage": self.max_coverage, "steps": self.steps,
                "success": self.success, "score": episode_score(self.max_coverage),
                "seconds": round(self.seconds, 3)}


def run_episode(policy, seed: int, env: PushTEnv | None = None, max_steps: int = MAX_STEPS,
                record: bool = False):
    """Run one protocol episode; with record=True also return the trajectory arrays."""
    env = env or PushTEnv(pixels=True)
    t0 = time.perf_counter()
    obs, info = env.reset(seed)
    policy.reset(seed)
    covs = []
    traj = {"states": [obs["state"]], "agent_vel": [obs["agent_vel"]], "actions": [],
            "coverage": [info["coverage"]], "frames": [obs.get("pixels")]} if record else None
    steps = 0
    for steps in range(1, max_steps + 1):
        action = np.asarray(policy.act(obs), dtype=np.float64).reshape(2)
        obs, _, terminated, _, info = env.step(action)
        covs.append(info["coverage"])
        if record:
            traj["actions"].append(action), traj["states"].append(obs["state"])
            traj["agent_vel"].append(obs["agent_vel"]), traj["coverage"].append(info["coverage"])
            traj["frames"].append(obs.get("pixels"))
        if terminated:
            break
    res = EpisodeResult(int(seed), float(max(covs)), steps, bool(max(covs) > SUCCESS_COVERAGE),
                        time.perf_counter() - t0)
    return (res, traj) if record else res


def _worker_episode(args):
    """Pool task: build the policy by registry name in this process, run one seed."""
    name, kwargs, seed, max_steps, pixels = args
    from dva.pusht.policies import make_policy

    global _CACHE
    key = (name, tuple(sorted(kwargs.items())), pixels)
    if _CACHE.get("key") != key:
        _CACHE = {"key": key, "policy": make_policy(name, **kwargs), "env": PushTEnv(pixels=pixels)}
    return run_episode(_CACHE["policy"], seed, _CACHE["env"], max_steps)


_CACHE: dict = {}


def evaluate(policy, seeds=SEEDS, workers: int = 1, max_steps: int = MAX_STEPS,
             pixels: bool = True, progress: bool = True, policy_kwargs: dict | None = None) -> dict:
    """Evaluate a policy on the protocol.

    policy: a registry name (dva.pusht.policies.POLICIES; any number of worker processes) or a
    policy object (runs in this process; workers must be 1). pixels=False skips rendering for
    privileged policies that never read obs["pixels"] (same physics, much faster).
    """
    from tqdm import tqdm

    seeds = [int(s) for s in seeds]
    t0 = time.perf_counter()
    bar = tqdm(total=len(seeds), desc="eval", unit="ep", disable=not progress)
    results = []
    if isinstance(policy, str):
        tasks = [(policy, policy_kwargs or {}, s, max_steps, pixels) for s in seeds]
        if workers <= 1:
            for t in tasks:
                results.append(_worker_episode(t))
                bar.update()
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for r in pool.imap(_worker_episode, tasks):
                    results.append(r)
                    bar.update()
    else:
        if workers > 1:
            raise ValueError("evaluate: a policy object runs in-process; pass a registry name for workers > 1")
        env = PushTEnv(pixels=pixels)
        for s in seeds:
            results.append(run_episode(policy, s, env, max_steps))
            bar.update()
    bar.close()
    summary = summarize([r.max_coverage for r in results])
    succ_steps = [r.steps for r in results if r.success]
    summary.update({
        "gym_pusht_version": gym_pusht_version(),
        "max_steps": max_steps,
        "mean_steps_to_success": float(np.mean(succ_steps)) if succ_steps else None,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
        "episodes_detail": [r.as_dict() for r in results],
    })
    return summary
