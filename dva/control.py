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
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .leapfrog import LeapfrogConfig
from .loop import make_env, run_lockstep, run_realtime
from .model.config import FREE_ACTIONS
from .policy import (PACKAGED_CHECKPOINT, CheckpointUnavailable, DVAPolicy, LockstepConfig,
                     PlannerConfig, load_planner, resolve_device)
from .video import ControlVideo


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
