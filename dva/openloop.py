"""Open-loop policy metrics: the planner's free actions against the expert's, on held-out episodes.

    python -m dva.collect --policy expert --episodes 50 --seed 600000 --out data/expert_dev
    python -m dva.openloop --checkpoint dva/assets/dva_s --data data/expert_dev --out runs/openloop.json

The free dream *is* the policy: at every `--every`-th step t of each episode the planner observes
the real frames up to t (the last `window` of them: what its ring cache holds in closed loop),
then plans `--horizon` frames with the first `--committed` conditioned on the expert's actions (as
lockstep leapfrog conditions on the action already being executed; the action executed into frame
t is given too, for models that read it) and the rest dreamed freely, each read by the IDM. For
each horizon step the JSON reports how far the planned action is from the expert's (px in the
512-px action space, mean and median), the direction agreement (cosine of the pointer's offset
from the disc, where the expert's is over 5 px) and the offset's length ratio (0: the plan says
"stay"; 1: it moves as far as the expert), beside three baselines that read no frames and know
what the planner knows (the executed and committed actions): "stay" (the pointer on the disc at
t), "last" (repeat the last known action) and "constvel" (continue the last two known actions'
velocity); and the IDM on the real frames (the error the plan would have if it dreamed the
expert's frames exactly). With --bc, a pixel-BC peer (dva.bc) is scored on the same plans (its
chunk read from frames t-1 and t; it is not given the committed action). Pick models by
`first_free_px` (its per-plan values are in the JSON for paired comparisons).
Episodes must come from seeds the model never trained on and not from the protocol's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dva.data.store import DatasetError, atomic_write_json, load_dataset
from dva.policy import ACTION_HIGH, ACTION_LOW, CheckpointUnavailable, load_planner, resolve_device
from dva.pusht.protocol import SEEDS
from dva.pusht.render import render_frames

MIN_OFFSET_PX = 5.0  # direction is only defined where the expert's pointer is this far from the disc


def baselines(states: np.ndarray, actions: np.ndarray, t: int, h: int, known: int) -> dict[str, np.ndarray]:
    """Actions for steps t..t+h-1 that read no frames, (h, 2) each, from what the planner knows
    at step t: the frame of step t and the actions before step `known` (those executed, and the
    committed ones)."""
    stay = np.repeat(states[t, :2][None], h, 0)
    last = actions[known - 1] if known >= 1 else states[t, :2]
    vel = actions[known - 1] - actions[known - 2] if known >= 2 else np.zeros(2)
    const = last[None] + vel[None] * (t + np.arange(h) - known + 1)[:, None]
    return {"stay": stay, "last": np.repeat(last[None], h, 0),
            "constvel": np.clip(const, ACTION_LOW, ACTION_HIGH)}


def step_stats(pred: np.ndarray, expert: np.ndarray, disc: np.ndarray) -> dict:
    """pred, expert (n, 2) actions and disc (n, 2) the disc's position at planning time."""
    err = np.linalg.norm(pred - expert, axis=1)
    po, eo = pred - disc, expert - disc
    en, pn = np.linalg.norm(eo, axis=1), np.linalg.norm(po, axis=1)
    ok = en > MIN_OFFSET_PX
    cos = (po[ok] * eo[ok]).sum(1) / np.maximum(pn[ok] * en[ok], 1e-9)
    return {"px_mean": float(err.mean()), "px_median": float(np.median(err)),
            "cos_mean": float(cos.mean()) if ok.any() else None,
            "cos_median": float(np.median(cos)) if ok.any() else None,
            "offset_ratio_median": float(np.median(pn[ok] / en[ok])) if ok.any() else None, "n": int(len(err))}


def evaluate(planner, ds, horizon: int, committed: int, every: int, max_episodes: int | None = None,
             progress: bool = True, bc=None) -> dict:
    """bc: a dva.bc.BCPolicy to score on the same plans (its chunk from frames t-1, t), or None."""
    from tqdm import tqdm

    model, idm, dev = planner.model, planner.idm, planner.device
    window = model.cfg.window
    n_eps = len(ds.steps) if max_episodes is None else min(max_episodes, len(ds.steps))
    peers = ("stay", "last", "constvel") + (("bc",) if bc is not None else ())
    rows = {k: [] for k in ("plan", "expert", "disc") + peers}
    idm_err = []
    for e in tqdm(range(n_eps), desc="openloop", unit="ep", disable=not progress):
        arr = ds.episode_arrays(e)
        states, actions = arr["states"], arr["actions"]
        frames = render_frames(torch.from_numpy(states).float())  # (T+1, 96, 96, 3) uint8
        with torch.inference_mode():  # the IDM on the real frames: the floor of the plan's error
            x = model.from_frames(frames.to(dev))
            T = len(actions)
            if T >= 2:
                a = idm(x[:T - 1], x[1:T], x[2:T + 1]).double().cpu().numpy()  # actions 1..T-1
                idm_err.append(np.linalg.norm(a - actions[1:T], axis=1))
        for t in range(0, len(actions) - horizon + 1, every):
            planner.reset(int(ds.seed[e]) * 1000 + t)
            for k in range(max(0, t - window + 1), t + 1):
                planner.observe(frames[k].numpy())
            plan = planner.plan(t, actions[t:t + committed], horizon, actions[t - 1] if t >= 1 else None)
            rows["plan"].append(plan.actions)
            rows["expert"].append(actions[t:t + horizon])
            rows["disc"].append(np.repeat(states[t, :2][None], horizon, 0))
            for k, v in baselines(states, actions, t, horizon, t + committed).items():
                rows[k].append(v)
            if bc is not None:
                rows["bc"].append(bc.predict(frames[max(t - 1, 0)].numpy(), frames[t].numpy())[:horizon])
    if not rows["plan"]:
        raise ValueError(f"no episode is longer than --horizon {horizon}")
    R = {k: np.stack(v) for k, v in rows.items()}  # (samples, horizon, 2)
    per_step = []
    for j in range(committed, horizon):
        ex, disc = R["expert"][:, j], R["disc"][:, j]
        per_step.append({"step": j, **{k: step_stats(R[k][:, j], ex, disc)
                                       for k in ("plan",) + peers}})
    first = per_step[0]
    per_plan = np.linalg.norm(R["plan"][:, committed] - R["expert"][:, committed], axis=1)
    return {"first_free_px": first["plan"]["px_mean"], "first_free_px_median": first["plan"]["px_median"],
            "first_free_px_per_plan": [round(float(v), 3) for v in per_plan],  # for paired comparisons
            "first_free_cos_mean": first["plan"]["cos_mean"], "stay_px": first["stay"]["px_mean"],
            **({"bc_px": first["bc"]["px_mean"], "bc_px_per_plan": [round(float(v), 3) for v in np.linalg.norm(
                R["bc"][:, committed] - R["expert"][:, committed], axis=1)]} if bc is not None else {}),
            "idm_real_px": float(np.concatenate(idm_err).mean()) if idm_err else None,
            "samples": int(len(R["plan"])), "episodes": n_eps, "per_step": per_step}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dva.openloop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint stem or file (default: the packaged model)")
    p.add_argument("--data", type=Path, required=True,
                   help="held-out expert episodes (a `python -m dva.collect` dir) from seeds the model never trained on")
    p.add_argument("--horizon", type=int, default=4, help="frames per plan (default: 4)")
    p.add_argument("--committed", type=int, default=1,
                   help="leading plan frames conditioned on the expert's actions, as lockstep leapfrog "
                        "conditions on the action being executed (default: 1)")
    p.add_argument("--every", type=int, default=5, help="plan at every N-th step of each episode (default: 5)")
    p.add_argument("--episodes", type=int, default=None, help="use the first N episodes (default: all)")
    p.add_argument("--bc", type=Path, default=None,
                   help="also score a pixel-BC checkpoint (OUT/bc of `python -m dva.bc`) on the same plans")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:i]' (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("runs/openloop.json"), help="JSON of the metrics, written atomically")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from dva.policy import PACKAGED_CHECKPOINT, PlannerConfig

    if not 0 <= args.committed < args.horizon:
        print(f"error: need 0 <= --committed < --horizon, got {args.committed}, {args.horizon}", file=sys.stderr)
        return 2
    if args.every < 1 or (args.episodes is not None and args.episodes < 1):
        print("error: --every and --episodes must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ds = load_dataset(args.data, frames=False)
        dev = resolve_device(args.device)
        ckpt = PACKAGED_CHECKPOINT if args.checkpoint is None else args.checkpoint
        planner, meta = load_planner(ckpt, dev, PlannerConfig(sample_steps=args.sample_steps))
        bc = None
        if args.bc is not None:
            from dva.bc import BCPolicy

            bc = BCPolicy(args.bc)
            if bc.net.cfg.chunk < args.horizon:
                raise ValueError(f"--bc {args.bc} predicts {bc.net.cfg.chunk} actions, fewer than --horizon {args.horizon}")
    except (DatasetError, CheckpointUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    clash = sorted(set(ds.seed.tolist()) & set(SEEDS))
    if clash:
        print(f"warning: --data holds protocol seeds ({clash[0]}..): they are for reporting, not for "
              f"choosing models", file=sys.stderr)
    t0 = time.perf_counter()
    res = evaluate(planner, ds, args.horizon, args.committed, args.every, args.episodes, not args.quiet, bc)
    res = {"checkpoint": str(ckpt), "bc": None if args.bc is None else str(args.bc), "data": str(args.data), "seeds": [int(ds.seed.min()), int(ds.seed.max())],
           "horizon": args.horizon, "committed": args.committed, "every": args.every,
           "sample_steps": planner.sample_steps, "device": str(dev),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "seconds": round(time.perf_counter() - t0, 1), **res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    print(f"{'step':>4}  {'plan px':>14}  {'cos':>5}  {'ratio':>5}  {'stay px':>7}  {'last px':>7}  {'constvel px':>11}"
          + ("  bc px" if bc is not None else ""))
    for r in res["per_step"]:
        p = r["plan"]
        fmt = (lambda v: "  -  " if v is None else f"{v:5.2f}")
        print(f"{r['step']:>4}  {p['px_mean']:6.1f} ({p['px_median']:5.1f})  {fmt(p['cos_mean'])}  "
              f"{fmt(p['offset_ratio_median'])}  {r['stay']['px_mean']:7.1f}  {r['last']['px_mean']:7.1f}  "
              f"{r['constvel']['px_mean']:11.1f}" + (f"  {r['bc']['px_mean']:5.1f}" if bc is not None else ""))
    print(f"first free action {res['first_free_px']:.1f} px (stay {res['stay_px']:.1f}); IDM on real frames "
          f"{res['idm_real_px']:.1f} px; {res['samples']} plans from {res['episodes']} episodes, "
          f"{res['seconds']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
