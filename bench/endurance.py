"""Endurance: many consecutive lockstep control steps, episodes back to back; memory and step
latency must stay flat (the ring KV cache and every statistic are fixed-size).

Not part of CI (it takes hours on a CPU). Example (the figure in docs/control.md):

    nohup python bench/endurance.py --steps 100000 --threads 1 > endurance.log 2>&1 &

Runs the real gym-pusht env and the DVA policy (dva.policy.DVAPolicy, lockstep) with the `tiny`
model, randomly initialised unless --checkpoint is given (weights do not change the cost).
Reports resident memory (RSS) and step latency over the first and last 10% of the steps, and
writes them, with the config and device, to --out as JSON (atomically, also every
--save-every steps so an interrupted run still leaves its numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dva.loop import make_env  # noqa: E402
from dva.policy import DVAPlanner, DVAPolicy, LockstepConfig, PlannerConfig, load_planner  # noqa: E402


def build_policy(args) -> DVAPolicy:
    pcfg = PlannerConfig(sample_steps=args.sample_steps)
    if args.checkpoint:
        planner, _ = load_planner(args.checkpoint, "cpu", pcfg)
    else:
        from dva.model.config import preset
        from dva.model.dva import DVA
        from dva.model.idm import IDM

        torch.manual_seed(0)
        cfg = preset("tiny")
        planner = DVAPlanner(DVA(cfg).eval(), IDM(cfg).eval(), "cpu", pcfg)
    return DVAPolicy(planner, LockstepConfig(delay=args.delay, replan=args.replan))


def window_stats(act_s: np.ndarray, step_s: np.ndarray, rss: np.ndarray) -> dict:
    return {"steps": int(len(step_s)),
            "step_ms_p50": float(np.median(step_s) * 1e3), "step_ms_p99": float(np.quantile(step_s, 0.99) * 1e3),
            "step_ms_mean": float(step_s.mean() * 1e3),
            "act_ms_p50": float(np.median(act_s) * 1e3), "act_ms_p99": float(np.quantile(act_s, 0.99) * 1e3),
            "rss_mib_mean": float(rss.mean() / 2**20), "rss_mib_max": float(rss.max() / 2**20)}


def report(args, n: int, act_s, step_s, rss, episodes: int, wall: float) -> dict:
    k = max(1, n // 10)
    first = window_stats(act_s[:k], step_s[:k], rss[:k])
    last = window_stats(act_s[n - k:n], step_s[n - k:n], rss[n - k:n])
    return {
        "done_steps": n, "target_steps": args.steps, "episodes": episodes, "wall_s": wall,
        "first_10pct": first, "last_10pct": last,
        "rss_growth_mib": last["rss_mib_mean"] - first["rss_mib_mean"],
        # the curve, not just its ends: RSS (MiB) and step p50 (ms) per tenth of the run so far
        "rss_mib_by_tenth": [float(c.mean() / 2**20) for c in np.array_split(rss[:n], 10) if len(c)],
        "step_ms_p50_by_tenth": [float(np.median(c) * 1e3) for c in np.array_split(step_s[:n], 10) if len(c)],
        "step_p50_ratio_last_first": last["step_ms_p50"] / first["step_ms_p50"],
        "config": {k: v for k, v in vars(args).items()},
        "model": "tiny" if not args.checkpoint else args.checkpoint,
        "device": f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=100_000, help="consecutive control steps in total")
    p.add_argument("--episode-steps", type=int, default=300, help="steps per episode (protocol: 300)")
    p.add_argument("--seed", type=int, default=100000, help="env seed of the first episode (then +1 each)")
    p.add_argument("--checkpoint", default="", help="DVA checkpoint; default: a random tiny model")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="ODE steps per predicted frame (default: the model's sampler_steps)")
    p.add_argument("--delay", type=int, default=1, help="lockstep delay (steps), as in dva.control")
    p.add_argument("--replan", type=int, default=1, help="lockstep replan interval (steps), as in dva.control")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="bench/results/endurance.json", help="JSON report path")
    p.add_argument("--save-every", type=int, default=5000, help="rewrite the report every this many steps")
    args = p.parse_args(argv)
    if args.steps < 10 or args.episode_steps < 1:
        p.error("--steps must be >= 10 and --episode-steps >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    policy = build_policy(args)
    env = make_env()
    proc = psutil.Process()
    # preallocated and touched (np.full, not lazily mapped np.zeros), so the measurement itself
    # does not grow resident memory during the run
    act_s = np.full(args.steps, np.nan)
    step_s = np.full(args.steps, np.nan)
    rss = np.full(args.steps, np.nan)
    episodes, t_start, k_ep = 0, time.perf_counter(), args.episode_steps
    obs = None
    with torch.inference_mode(), tqdm(total=args.steps, desc="endurance (lockstep, tiny)", unit="step",
                                      mininterval=5.0) as bar:
        for i in range(args.steps):
            if k_ep >= args.episode_steps:  # episodes back to back
                policy.reset(args.seed + episodes)
                obs, _ = env.reset(args.seed + episodes)
                episodes += 1
                k_ep = 0
            t0 = time.perf_counter()
            a = policy.act(obs)
            t1 = time.perf_counter()
            obs, _, terminated, _, _ = env.step(a)
            step_s[i] = time.perf_counter() - t0
            act_s[i] = t1 - t0
            rss[i] = proc.memory_info().rss
            k_ep = args.episode_steps if terminated else k_ep + 1
            bar.update(1)
            if (i + 1) % args.save_every == 0:
                save(out, report(args, i + 1, act_s, step_s, rss, episodes, time.perf_counter() - t_start))
    doc = report(args, args.steps, act_s, step_s, rss, episodes, time.perf_counter() - t_start)
    save(out, doc)
    f, l = doc["first_10pct"], doc["last_10pct"]
    print(f"{args.steps} steps, {episodes} episodes, {doc['wall_s']:.0f} s on {doc['device']} "
          f"({doc['torch_threads']} thread(s))")
    print(f"first 10%: RSS {f['rss_mib_mean']:.1f} MiB, step p50/p99 {f['step_ms_p50']:.1f}/{f['step_ms_p99']:.1f} ms")
    print(f"last 10%:  RSS {l['rss_mib_mean']:.1f} MiB, step p50/p99 {l['step_ms_p50']:.1f}/{l['step_ms_p99']:.1f} ms")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
