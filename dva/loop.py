"""One closed-loop PushT episode with a DVA: lockstep (the env waits for inference) or real time
(the env runs at 10 Hz wall clock while an inference thread plans). `python -m dva.control` is the
command around them; the modes are described in its docstring.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .leapfrog import Leapfrog, LeapfrogConfig
from .policy import DVAPlanner, DVAPolicy
from .pusht.env import SUBSTEPS, SUCCESS_COVERAGE, hold_substeps_for
from .video import ControlVideo

def make_env():
    """The real gym-pusht env with the contract's observation dict (dva.pusht.env)."""
    from .pusht.env import PushTEnv

    return PushTEnv()


def _episode_record(seed: int, coverages: list[float], steps: int, wall_s: float, leap: Leapfrog,
                    extra: dict) -> dict:
    cov = max(coverages) if coverages else 0.0
    stats = leap.stats()
    return {"seed": seed, "steps": steps, "max_coverage": cov,
            "score": float(np.clip(cov / SUCCESS_COVERAGE, 0.0, 1.0)),
            "success": bool(cov > SUCCESS_COVERAGE), "wall_s": wall_s,
            "control_hz": steps / wall_s if wall_s > 0 else None, **stats, **extra}


# --- lockstep ----------------------------------------------------------------------------------
def run_lockstep(env, policy: DVAPolicy, seed: int, max_steps: int, video: ControlVideo | None = None,
                 bar: tqdm | None = None) -> tuple[dict, np.ndarray]:
    """One episode, the env waiting for inference; each action lands policy.latency_ms into its
    step. Returns (record, executed actions (T, 2))."""
    hold = hold_substeps_for(policy.latency_ms)
    policy.reset(seed)
    obs, _ = env.reset(seed)
    coverages, actions = [], []
    t0 = time.perf_counter()
    for k in range(max_steps):
        a = policy.act(obs)
        actions.append(a)
        if video is not None:
            cov = coverages[-1] if coverages else 0.0
            video.add(k, obs["pixels"], a, policy.active_plan, policy.last_miss, f"coverage {cov:.3f}")
        obs, _, terminated, truncated, info = env.step(a, hold)
        coverages.append(float(info["coverage"]))
        if bar is not None:
            bar.update(1)
        if terminated or truncated:
            break
    wall = time.perf_counter() - t0
    rec = _episode_record(seed, coverages, len(actions), wall, policy.leap,
                          {"mode": "lockstep", "lands_ms_into_step": policy.latency_ms})
    return rec, np.asarray(actions).reshape(-1, 2)


# --- real time ---------------------------------------------------------------------------------
class InferenceThread(threading.Thread):
    """Plans on the newest real frames while the control loop runs.

    Every real frame posted enters the cache in order (the model saw 10 Hz sequences in
    training); the plan starts from the newest one and is conditioned on the actions the
    controller will execute until the plan can take over (Leapfrog.committed).
    """

    def __init__(self, planner: DVAPlanner, leap: Leapfrog):
        super().__init__(daemon=True, name="dva-inference")
        self.planner, self.leap = planner, leap
        self._cv = threading.Condition()
        self._inbox: list[tuple[int, np.ndarray, float]] = []  # (step, frame, time posted)
        # (plan start, step) -> when that plan's action for the step was first submitted
        self._landed: dict[tuple[int, int], float] = {}
        self._halt = False
        self.error: BaseException | None = None

    def post(self, step: int, frame: np.ndarray) -> None:
        with self._cv:
            self._inbox.append((step, frame, time.perf_counter()))
            self._cv.notify()

    def _submit(self, t: int, plan) -> None:
        with self._cv:  # atomic with take(): a plan has landed or it has not
            self.leap.submit(plan)
            now = time.perf_counter()
            self._landed = {k: v for k, v in self._landed.items() if k[0] > t - 8}
            for s in range(plan.start + plan.committed, plan.start + plan.horizon):
                self._landed.setdefault((plan.start, s), now)  # (committed ones run anyway)
            self._cv.notify_all()

    def take(self, k: int, tick: float, dt: float) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
        """The control side of step k (whose frame was taken at `tick`): wait, at most until the
        step ends, for the plan made from frame k; then (target, held, miss, hold_substeps): the
        step tracks `held` for hold_substeps substeps (until the action that runs landed: plans
        are submitted action by action) and `target` for the rest."""
        # a plan landing in the step's last substep could not act in it: stop waiting there,
        # which leaves that substep for the physics and the frame
        until = tick + dt * (SUBSTEPS - 1) / SUBSTEPS
        with self._cv:  # (the first plan is made before the clock: no wait at step 0)
            self._cv.wait_for(lambda: max((s for s, _ in self._landed), default=0) >= k or self._halt
                              or self.error is not None, timeout=max(0.0, until - time.perf_counter()))
            held = self.leap.target(k)
            a, miss = self.leap.action(k)
            landed = None if miss else self._landed.get((self.leap.active.start, k))
        if landed is None or held is None or landed <= tick:
            return a, held, miss, 0
        return a, held, miss, min(SUBSTEPS, math.ceil((landed - tick) / (dt / SUBSTEPS)))

    def stop(self) -> None:
        with self._cv:
            self._halt = True
            self._cv.notify()
        self.join()
        if self.error is not None:
            raise RuntimeError("inference thread failed") from self.error

    def run(self) -> None:
        try:
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._inbox or self._halt)
                    if self._halt:
                        return
                    batch, self._inbox = self._inbox, []
                launched = time.perf_counter()
                for _, frame, _ in batch:
                    self.planner.observe(frame)
                t, _, posted = batch[-1]
                waited = launched - posted  # the newest frame waited for the previous plan
                h = self.leap.horizon(waited)
                n = min(self.leap.landing_steps(h, waited), h)
                # each free action is submitted as soon as it is read (early), so the plan's
                # coverage grows frame by frame; the whole plan when it is done
                plan = self.planner.plan(t, self.leap.committed(t, n), h, self.leap.executed_into(t),
                                         early=lambda p, t=t: self._submit(t, p))
                # the plan's cost from its launch, of which all but the dreaming is fixed (observing
                # the frames that arrived); the wait before it and the frames that piled up during
                # the previous plan are reported, not planned for (Leapfrog.record_latency)
                total = time.perf_counter() - launched
                self.leap.record_latency(total, h, fixed_s=total - plan.latency_s, waited_s=waited,
                                        observed=len(batch))
                self._submit(t, plan)
        except BaseException as e:  # surfaced by stop() in the control thread
            self.error = e


@dataclass
class _Step:  # what the video needs of one real-time step (rendered after the episode)
    k: int
    frame: np.ndarray
    action: np.ndarray
    plan: object
    miss: bool
    coverage: float


def run_realtime(env, planner: DVAPlanner, leap_cfg: LeapfrogConfig, seed: int, max_steps: int,
                 video: ControlVideo | None = None, bar: tqdm | None = None) -> tuple[dict, np.ndarray]:
    """One episode at 10 Hz wall clock with concurrent inference."""
    leap = Leapfrog(leap_cfg)
    planner.reset(seed)
    obs, _ = env.reset(seed)
    # The first plan is made before the clock starts: a robot waits for its first plan too.
    planner.observe(obs["pixels"])
    first = planner.plan(0, np.zeros((0, 2)), leap_cfg.h_init)
    leap.record_latency(first.latency_s, first.horizon)
    if leap.horizon() > first.horizon:  # too short for the measured latency: plan again, longer
        first = planner.plan(0, np.zeros((0, 2)), leap.horizon())
        leap.record_latency(first.latency_s, first.horizon)
    leap.submit(first)
    worker = InferenceThread(planner, leap)
    worker.start()
    coverages, actions, steps, holds = [], [], [], []
    overruns = 0  # ticks where the control thread itself was late (env step + bookkeeping > dt)
    t0 = tick = time.perf_counter()
    try:
        for k in range(max_steps):
            if k > 0:
                worker.post(k, obs["pixels"])
            a, held, miss, hold = worker.take(k, tick, leap_cfg.dt)
            holds.append(hold)
            actions.append(a)
            if video is not None:
                steps.append(_Step(k, obs["pixels"], a, leap.active, miss, coverages[-1] if coverages else 0.0))
            obs, _, terminated, truncated, info = env.step(a, hold, held)
            coverages.append(float(info["coverage"]))
            if bar is not None:
                bar.update(1)
            tick += leap_cfg.dt  # the env advances on the wall clock, whatever inference does
            wait = tick - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                overruns += 1
            if terminated or truncated or worker.error is not None:
                break
        wall = time.perf_counter() - t0
    finally:
        worker.stop()
    if video is not None:
        for s in steps:
            video.add(s.k, s.frame, s.action, s.plan, s.miss, f"coverage {s.coverage:.3f}  (real time)")
    rec = _episode_record(seed, coverages, len(actions), wall, leap, {
        "mode": "realtime", "tick_overruns": overruns,
        # how late in each step the new target took over (10 ms substeps; what --latency-ms models)
        "hold_substeps_mean": float(np.mean(holds)) if holds else None})
    return rec, np.asarray(actions).reshape(-1, 2)


# --- CLI ---------------------------------------------------------------------------------------
