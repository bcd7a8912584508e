"""The evaluation protocol (DESIGN.md section 4), in code.

50 episodes on env seeds 100000..100049, at most 300 steps at 10 Hz, 96x96 observations.
latency_ms models the policy's inference time within a step: the physics keeps tracking the
previous target for that long after each frame (PushTEnv.step's hold_substeps). By default it is
the policy's own `latency_ms` attribute (its measured act() time; 0 when it has none, as for the
privileged policies); 0 is the classic lockstep where an action acts from the instant its frame
is taken.
score = mean over episodes of max_t clip(coverage_t / 0.95, 0, 1); success = fraction of
episodes whose coverage exceeds 0.95. An episode ends at success (gym-pusht terminates there).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dva.pusht.env import SUCCESS_COVERAGE, PushTEnv, gym_pusht_version, hold_substeps_for
from dva.pusht.sim import outline_world, vertex_error

SEEDS = tuple(range(100000, 100050))
DEV_SEEDS = tuple(range(500000, 500100))  # development seeds: choose models here, report on SEEDS (100 since stop 35)
MAX_STEPS = 300
PARKED_SPEED, PARKED_STEPS = 2.0, 20  # "parked": the disc under 2 px/step for 20+ steps in a row
WALL_INNER = (7.0, 504.0)  # inner faces of gym-pusht's walls (segments at 5 / 506, radius 2)
WALL_TOUCH_PX = 3.0  # a T corner this close to a wall counts as "T against the wall"


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


def episode_behaviour(states) -> dict:
    """How an episode went, from its states (T+1, 5), so a regression shows without a video:
    the longest run of steps with the disc slower than PARKED_SPEED px/step (`parked` if it
    reaches PARKED_STEPS), the steps with a T corner within WALL_TOUCH_PX of a wall (gym-pusht
    starts the T well inside, so any is the policy's doing), the first step that moved the T (the
    block moves only while pushed; None: never touched) and the T's mean corner distance from the
    goal at the end and at its best (px)."""
    s = np.asarray(states, dtype=np.float64)
    slow = np.linalg.norm(np.diff(s[:, :2], axis=0), axis=1) < PARKED_SPEED
    run = longest = 0
    for v in slow:
        run = run + 1 if v else 0
        longest = max(longest, run)
    corners = outline_world(s[:, 2:5])  # (T+1, 8, 2)
    gap = np.minimum(corners - WALL_INNER[0], WALL_INNER[1] - corners).min(axis=(1, 2))
    moved = np.nonzero(np.abs(s[1:, 2:5] - s[0, 2:5]).max(axis=1) > 1e-6)[0]
    err = vertex_error(s[:, 2:5])
    return {"parked_max_steps": int(longest), "parked": bool(longest >= PARKED_STEPS),
            "t_at_wall_steps": int((gap < WALL_TOUCH_PX).sum()), "t_against_wall": bool((gap < WALL_TOUCH_PX).any()),
            "first_contact_step": int(moved[0]) + 1 if moved.size else None,
            "final_pose_err_px": float(err[-1]), "best_pose_err_px": float(err.min())}


def behaviour_summary(episodes: list[dict]) -> dict:
    """Fractions and means of episode_behaviour over episodes (each dict has its keys)."""
    contact = [e["first_contact_step"] for e in episodes if e["first_contact_step"] is not None]
    return {"parked": float(np.mean([e["parked"] for e in episodes])),
            "t_against_wall": float(np.mean([e["t_against_wall"] for e in episodes])),
            "never_touched_t": float(np.mean([e["first_contact_step"] is None for e in episodes])),
            "mean_first_contact_step": float(np.mean(contact)) if contact else None,
            "mean_final_pose_err_px": float(np.mean([e["final_pose_err_px"] for e in episodes]))}


@dataclass
class EpisodeResult:
    seed: int
    max_coverage: float
    steps: int
    success: bool
    seconds: float
    behaviour: dict
    act_ms: float  # median wall time of the policy's act() per step (what latency_ms models)
    latency_ms: float  # when in each step the actions landed
    states: np.ndarray | None = None  # (T+1, 5) and (T+1, 2): the states visited (evaluate(keep_states=True))
    agent_vel: np.ndarray | None = None

    def as_dict(self) -> dict:
        return {"seed": self.seed, "max_coverage": self.max_coverage, "steps": self.steps,
                "success": self.success, "score": episode_score(self.max_coverage),
                "seconds": round(self.seconds, 3), "act_ms": round(self.act_ms, 2), "latency_ms": self.latency_ms,
                **self.behaviour}


def run_episode(policy, seed: int, env: PushTEnv | None = None, max_steps: int = MAX_STEPS,
                record: bool = False, start=None, latency_ms: float | None = None):
    """Run one protocol episode; with record=True also return the trajectory arrays. start:
    (state (5,), agent_vel (2,)) to begin from instead of the seed's random start (recovery data).
    latency_ms: each action lands that long after its frame (None: the policy's own; see the
    module docstring)."""
    env = env or PushTEnv(pixels=True)
    if latency_ms is None:
        latency_ms = float(getattr(policy, "latency_ms", 0.0))
    hold = hold_substeps_for(latency_ms)
    t0 = time.perf_counter()
    obs, info = env.reset(seed)
    if start is not None:
        obs, info = env.reset_to_state(*start)
    policy.reset(seed)
    covs, states, vels = [], [obs["state"]], [obs["agent_vel"]]
    traj = {"states": states, "agent_vel": vels, "actions": [],
            "coverage": [info["coverage"]], "frames": [obs.get("pixels")]} if record else None
    steps, act_s = 0, []
    for steps in range(1, max_steps + 1):
        t = time.perf_counter()
        action = np.asarray(policy.act(obs), dtype=np.float64).reshape(2)
        act_s.append(time.perf_counter() - t)
        obs, _, terminated, _, info = env.step(action, hold)
        covs.append(info["coverage"])
        states.append(obs["state"]), vels.append(obs["agent_vel"])
        if record:
            traj["actions"].append(action), traj["coverage"].append(info["coverage"])
            traj["frames"].append(obs.get("pixels"))
        if terminated:
            break
    res = EpisodeResult(int(seed), float(max(covs)), steps, bool(max(covs) > SUCCESS_COVERAGE),
                        time.perf_counter() - t0, episode_behaviour(states), 1e3 * float(np.median(act_s)), latency_ms,
                        np.asarray(states), np.asarray(vels))
    return (res, traj) if record else res


def _worker_episode(args):
    """Pool task: build the policy by registry name in this process, run one seed."""
    name, kwargs, seed, max_steps, pixels, keep_states, latency_ms = args
    from dva.pusht.policies import make_policy

    global _CACHE
    key = (name, tuple(sorted(kwargs.items())), pixels)
    if _CACHE.get("key") != key:
        _CACHE = {"key": key, "policy": make_policy(name, **kwargs), "env": PushTEnv(pixels=pixels)}
    res = run_episode(_CACHE["policy"], seed, _CACHE["env"], max_steps, latency_ms=latency_ms)
    if not keep_states:  # (not sent back across the process boundary)
        res.states = res.agent_vel = None
    return res


_CACHE: dict = {}


def evaluate(policy, seeds=SEEDS, workers: int = 1, max_steps: int = MAX_STEPS,
             pixels: bool = True, progress: bool = True, policy_kwargs: dict | None = None,
             keep_states: bool = False, latency_ms: float | None = None) -> dict:
    """Evaluate a policy on the protocol.

    policy: a registry name (dva.pusht.policies.POLICIES; any number of worker processes) or a
    policy object (runs in this process; workers must be 1). pixels=False skips rendering for
    privileged policies that never read obs["pixels"] (same physics, much faster). keep_states:
    the summary's "results" holds the EpisodeResults with the states each episode visited.
    latency_ms: every action lands that long after its frame (run_episode; None: the policy's
    own); the summary's act_ms_p50 is the median act() time measured, to set it by.
    """
    from tqdm import tqdm

    seeds = [int(s) for s in seeds]
    if latency_ms is not None:
        hold_substeps_for(latency_ms)  # a bad latency fails here, not in a worker
    t0 = time.perf_counter()
    bar = tqdm(total=len(seeds), desc="eval", unit="ep", disable=not progress)
    results = []
    if isinstance(policy, str):
        tasks = [(policy, policy_kwargs or {}, s, max_steps, pixels, keep_states, latency_ms) for s in seeds]
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
            results.append(run_episode(policy, s, env, max_steps, latency_ms=latency_ms))
            bar.update()
    bar.close()
    summary = summarize([r.max_coverage for r in results])
    succ_steps = [r.steps for r in results if r.success]
    summary.update({
        "gym_pusht_version": gym_pusht_version(),
        "max_steps": max_steps,
        "latency_ms": results[0].latency_ms,
        "act_ms_p50": float(np.median([r.act_ms for r in results])),
        "mean_steps_to_success": float(np.mean(succ_steps)) if succ_steps else None,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
        "behaviour": behaviour_summary([r.behaviour for r in results]),
        "episodes_detail": [r.as_dict() for r in results],
    })
    if keep_states:
        summary["results"] = results
    return summary
