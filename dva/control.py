"""`python -m dva.control`: closed-loop PushT control with a DVA, leapfrog inference, dream videos.

Two modes, both reporting control rate, inference latency p50/p99, deadline misses and the action
jump at plan boundaries:

- lockstep (default; reproducible): the environment waits for inference. A plan made from the
  frame of step t takes over at step t + delay (LockstepConfig; default 0), with delay 0
  `--latency-ms` into that step (the physics tracks the previous target until then, as
  `dva.eval` does). Same seed, same actions.
- `--realtime`: the environment advances at 10 Hz wall clock in this (main) thread while an
  inference thread plans on the newest real frames (torch releases the GIL). A plan takes over
  the moment it lands, within the step: the physics tracks the previous target for the 10 ms
  substeps before (PushTEnv.step's hold_substeps), as `dva.eval --latency-ms` models. The
  horizon adapts to the measured latency; when inference falls behind, the controller holds the
  last target and counts a deadline miss.

Outputs in --out: metrics.json (atomic write) and one video per episode (dva.video).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .leapfrog import Leapfrog, LeapfrogConfig
from .model.config import FREE_ACTIONS
from .pusht.env import SUBSTEPS, SUCCESS_COVERAGE, hold_substeps_for
from .policy import (PACKAGED_CHECKPOINT, CheckpointUnavailable, DVAPlanner, DVAPolicy, LockstepConfig,
                     PlannerConfig, load_planner, resolve_device)
from .video import ControlVideo



# --- environment -------------------------------------------------------------------------------
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
        self._landed: dict[int, float] = {}  # plan start step -> when it was submitted
        self._halt = False
        self.error: BaseException | None = None

    def post(self, step: int, frame: np.ndarray) -> None:
        with self._cv:
            self._inbox.append((step, frame, time.perf_counter()))
            self._cv.notify()

    def _submit(self, t: int, plan) -> None:
        with self._cv:  # atomic with take(): a plan has landed or it has not
            self.leap.submit(plan)
            self._landed = {s: v for s, v in self._landed.items() if s > t - 8}
            self._landed.setdefault(t, time.perf_counter())  # when its first action landed
            self._cv.notify_all()

    def take(self, k: int, tick: float, dt: float) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
        """The control side of step k (whose frame was taken at `tick`): wait, at most until the
        step ends, for the plan made from frame k; then (target, held, miss, hold_substeps): the
        step tracks `held` for hold_substeps substeps (until the plan that took over landed) and
        `target` for the rest."""
        # a plan landing in the step's last substep could not act in it: stop waiting there,
        # which leaves that substep for the physics and the frame
        until = tick + dt * (SUBSTEPS - 1) / SUBSTEPS
        with self._cv:  # (the first plan is made before the clock: no wait at step 0)
            self._cv.wait_for(lambda: max(self._landed, default=0) >= k or self._halt or self.error is not None,
                              timeout=max(0.0, until - time.perf_counter()))
            held, before = self.leap.target(k), self.leap.active
            a, miss = self.leap.action(k)
            landed = self._landed.get(self.leap.active.start) if self.leap.active is not before else None
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
                for _, frame, _ in batch:
                    self.planner.observe(frame)
                t, _, posted = batch[-1]
                h = self.leap.horizon()
                n = min(self.leap.landing_steps(h), h)
                # its first free action is submitted as soon as it is read (early), the whole plan
                # (the frames that cover a late next plan) when it is done
                plan = self.planner.plan(t, self.leap.committed(t, n), h, self.leap.executed_into(t),
                                         early=lambda p, t=t: self._submit(t, p))
                # latency as the scheduler sees it: from the frame's arrival to the whole plan; all
                # but the dreaming itself is fixed cost (observing the frames that arrived)
                total = time.perf_counter() - posted
                self.leap.record_latency(total, h, fixed_s=total - plan.latency_s)
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
@dataclass
class ControlConfig:
    checkpoint: str = str(PACKAGED_CHECKPOINT)
    episodes: int = 1
    max_steps: int = 300
    seed: int = 100000  # the protocol's first seed (DESIGN.md section 4)
    out: str = "runs/control"
    realtime: bool = False
    device: str = "auto"
    # torch CPU threads. 1 by default: on the shared 2-core CPU, batch-1 inference with 2 threads
    # was 25x slower than with 1 (1432 vs 60 ms per tiny plan, load average 3.8), and real time
    # needs a core for the control thread. 0: torch's default.
    threads: int = 1
    video: bool = True
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    lockstep: LockstepConfig = field(default_factory=LockstepConfig)
    leapfrog: LeapfrogConfig = field(default_factory=LeapfrogConfig)


def write_json(path: Path, doc: dict) -> None:
    """Atomic: a reader never sees a half-written metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=float))
    os.replace(tmp, path)


def _mean(recs, key):
    vals = [r[key] for r in recs if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def run(cfg: ControlConfig) -> dict:
    """Load the checkpoint, run the episodes, write videos and metrics.json; returns the metrics."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    planner, meta = load_planner(cfg.checkpoint, device, cfg.planner)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env()
    policy = DVAPolicy(planner, cfg.lockstep)
    if cfg.realtime:  # one untimed plan so one-time costs (allocation, first kernels) stay out of latency
        planner.reset(0)
        planner.observe(env.reset(cfg.seed)[0]["pixels"])
        planner.plan(0, np.zeros((0, 2)), cfg.leapfrog.h_init)
    episodes = []
    mode = "realtime" if cfg.realtime else "lockstep"
    with tqdm(total=cfg.episodes * cfg.max_steps, desc=f"dva.control ({mode}, {device.type})", unit="step") as bar:
        for i in range(cfg.episodes):
            seed = cfg.seed + i
            video = ControlVideo(out / f"episode_{seed}.mp4", title=f"DVA {mode}  seed {seed}") if cfg.video else None
            try:
                if cfg.realtime:
                    rec, _ = run_realtime(env, planner, cfg.leapfrog, seed, cfg.max_steps, video, bar)
                else:
                    rec, _ = run_lockstep(env, policy, seed, cfg.max_steps, video, bar)
            except BaseException:
                if video is not None:
                    video.abort()
                raise
            if video is not None:
                rec["video"] = str(video.close())
            bar.update(cfg.max_steps - rec["steps"])  # episodes that end early
            bar.set_postfix(score=f"{rec['score']:.2f}", misses=rec["deadline_misses"])
            episodes.append(rec)
    metrics = {
        "mode": mode,
        "checkpoint": str(cfg.checkpoint), "checkpoint_meta": meta,
        "config": asdict(cfg),
        "sample_steps": planner.sample_steps,
        "free_action": planner.free_action,
        "device": _device_name(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "gym_pusht": _version("gym-pusht"),
        "summary": {
            "episodes": len(episodes), "score": _mean(episodes, "score"),
            "success": _mean(episodes, "success"), "control_hz": _mean(episodes, "control_hz"),
            "latency_ms_p50": _mean([e["latency_ms"] for e in episodes], "p50"),
            "latency_ms_p99": _mean([e["latency_ms"] for e in episodes], "p99"),
            "deadline_misses": int(sum(e["deadline_misses"] for e in episodes)),
            "action_jump_px_mean": _mean([e["action_jump_px"] for e in episodes], "mean"),
            "action_delta_px_mean": _mean([e["action_delta_px"] for e in episodes], "mean"),
        },
        "episodes": episodes,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def build_parser() -> argparse.ArgumentParser:
    d = ControlConfig()
    p = argparse.ArgumentParser(prog="python -m dva.control", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=d.checkpoint,
                   help="DVA checkpoint (.safetensors with its .json beside it); default: the packaged one")
    p.add_argument("--episodes", type=int, default=d.episodes, help="episodes to run (seeds seed, seed+1, ...)")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="control steps per episode (10 Hz)")
    p.add_argument("--seed", type=int, default=d.seed, help="env seed of the first episode (also seeds the sampler noise)")
    p.add_argument("--out", default=d.out, help="output folder: metrics.json and episode_<seed>.mp4")
    p.add_argument("--realtime", action="store_true",
                   help="env at 10 Hz wall clock with concurrent inference (default: lockstep, reproducible)")
    p.add_argument("--device", default=d.device, help="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default; 1 keeps a core for the control loop)")
    p.add_argument("--no-video", action="store_true", help="skip the videos (metrics only)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="ODE steps per predicted frame (default: the checkpoint's sampler_steps)")
    p.add_argument("--free-action", choices=FREE_ACTIONS, default=d.planner.free_action,
                   help="conditioning of frames dreamed past the committed actions: none, the previous planned "
                        "action, or intent (the action the model's own head reads off the context); default: the "
                        "checkpoint's free_action")
    p.add_argument("--delay", type=int, default=d.lockstep.delay,
                   help="lockstep: steps between a plan's frame and the step it takes over (0: within that step, "
                        "--latency-ms into it; 1: at the next frame)")
    p.add_argument("--latency-ms", type=float, default=d.lockstep.latency_ms,
                   help="lockstep, delay 0: each action lands this long into its step, in [0, 100) (the physics "
                        "tracks the previous target until then); the default is the package's plan time on one "
                        "core of a 2-core Xeon. Real time measures it instead")
    p.add_argument("--replan", type=int, default=d.lockstep.replan, help="lockstep: launch a plan every this many steps")
    p.add_argument("--margin", type=int, default=None,
                   help=f"extra horizon steps (default: lockstep {d.lockstep.margin}, real time {d.leapfrog.margin})")
    p.add_argument("--h-max", type=int, default=d.leapfrog.h_max, help="real time: longest horizon (frames per plan)")
    return p


def config_from_args(args: argparse.Namespace) -> ControlConfig:
    d = ControlConfig()
    if not 0 <= args.latency_ms < 100:
        raise ValueError(f"--latency-ms must be in [0, 100) ms (a longer wait is a --delay), got {args.latency_ms}")
    for name in ("episodes", "max_steps", "sample_steps", "replan", "h_max"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return ControlConfig(
        checkpoint=args.checkpoint, episodes=args.episodes, max_steps=args.max_steps, seed=args.seed, out=args.out,
        realtime=args.realtime, device=args.device, threads=args.threads, video=not args.no_video,
        planner=PlannerConfig(sample_steps=args.sample_steps, free_action=args.free_action),
        lockstep=LockstepConfig(delay=args.delay, replan=args.replan, latency_ms=args.latency_ms,
                                margin=d.lockstep.margin if args.margin is None else args.margin),
        leapfrog=LeapfrogConfig(margin=d.leapfrog.margin if args.margin is None else args.margin,
                                h_max=args.h_max, h_init=min(d.leapfrog.h_init, args.h_max)),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as e:
        print(f"dva.control: error: {e}", file=sys.stderr)
        return 2
    try:
        metrics = run(cfg)
    except CheckpointUnavailable as e:
        print(f"dva.control: {e}", file=sys.stderr)
        return 2
    s = metrics["summary"]
    lat = f"{s['latency_ms_p50']:.1f} / {s['latency_ms_p99']:.1f} ms" if s["latency_ms_p50"] is not None else "n/a"
    print(f"{metrics['mode']} on {metrics['device']}: score {s['score']:.3f}, success {s['success']:.2f}, "
          f"control {s['control_hz']:.1f} Hz, inference p50/p99 {lat}, deadline misses {s['deadline_misses']}")
    out = Path(cfg.out)
    print(f"metrics: {out / 'metrics.json'}")
    for e in metrics["episodes"]:
        if "video" in e:
            print(f"video:   {e['video']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
