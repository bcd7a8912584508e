"""Is the expert's next action in the video model's context? A linear probe says.

    python -m dva.probe --checkpoint dva/assets/dva_s --train data/expert --test data/expert_dev

The free dream is the policy, and the decoder can only dream the expert's next move if the
transformer's context of frame t carries it. This fits a ridge regression from features of frame
t to the expert's action a_t (px, 512 action space) on `--train` episodes and reports its error on
held-out `--test` episodes, for three features: the transformer's output at frame t (the
decoder's context: it has seen frames t-7..t), the encoder's tokens of frame t alone (no history)
and, as a floor that reads no frame, the last action's constant-velocity continuation. A context
probe near the frame-reading peers (dva.bc, the IDM on real frames) says the information is there
and the decoder fails to render it; a probe far above them says the trunk never learned it.
Each episode is cut into windows of the ring cache's length; positions with at least
`--min-history` frames before them are probed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dva.data.store import DatasetError, atomic_write_json, load_dataset
from dva.pusht.render import render_frames


@torch.inference_mode()
def features(model, ds, max_episodes: int, min_history: int, progress: bool = True) -> dict[str, np.ndarray]:
    """Per probed frame t: the transformer's context and the encoder's tokens (flattened), the
    expert's a_t, and the constant-velocity guess a_{t-1} + (a_{t-1} - a_{t-2})."""
    from tqdm import tqdm

    W = model.cfg.window
    rows = {"context": [], "tokens": [], "action": [], "constvel": []}
    for e in tqdm(range(min(max_episodes, len(ds.steps))), desc="probe features", unit="ep", disable=not progress):
        arr = ds.episode_arrays(e)
        acts = arr["actions"]
        x = model.from_frames(render_frames(torch.from_numpy(arr["states"]).float()))  # (T+1, 3, 96, 96)
        for s in range(0, len(acts) - W + 1, W):  # windows of W frames, each with an action after it
            tok, _ = model.encoder(x[s:s + W])  # (W, N, D): frame t's tokens alone
            ctx = model.transformer(tok.reshape(1, -1, tok.shape[-1]), tok.shape[1]).view(tok.shape)  # as DVA.context
            for k in range(min_history, W):
                t = s + k
                rows["context"].append(ctx[k].flatten().numpy())
                rows["tokens"].append(tok[k].flatten().numpy())
                rows["action"].append(acts[t])
                rows["constvel"].append(np.clip(2 * acts[t - 1] - acts[t - 2], 0, 512) if t >= 2 else acts[max(t - 1, 0)])
    return {k: np.stack(v).astype(np.float64) for k, v in rows.items()}


def ridge(Xtr, ytr, Xte, lambdas=(1e-2, 1e-1, 1.0, 10.0, 100.0)) -> tuple[np.ndarray, float]:
    """Ridge regression on standardised features, its strength chosen on the last 20% of the
    training rows; returns (predictions for Xte, chosen lambda)."""
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    ym = ytr.mean(0)
    n = int(len(Xtr) * 0.8)

    def fit(X, y, lam):
        return np.linalg.solve(X.T @ X + lam * len(X) * np.eye(X.shape[1]), X.T @ (y - ym))

    errs = [np.linalg.norm(Xtr[n:] @ fit(Xtr[:n], ytr[:n], lam) + ym - ytr[n:], axis=1).mean() for lam in lambdas]
    lam = lambdas[int(np.argmin(errs))]
    return Xte @ fit(Xtr, ytr, lam) + ym, lam


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dva.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint stem or file (default: the packaged model)")
    p.add_argument("--train", type=Path, required=True, help="expert episodes to fit the probe on (the model's training data is fine)")
    p.add_argument("--test", type=Path, required=True, help="held-out expert episodes (e.g. data/expert_dev)")
    p.add_argument("--train-episodes", type=int, default=300, help="episodes of --train used (default: 300)")
    p.add_argument("--min-history", type=int, default=2, help="frames seen before a probed frame (default: 2)")
    p.add_argument("--out", type=Path, default=Path("runs/probe.json"), help="JSON of the results, written atomically")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from dva.policy import PACKAGED_CHECKPOINT, CheckpointUnavailable, load_planner

    ckpt = PACKAGED_CHECKPOINT if args.checkpoint is None else args.checkpoint
    try:
        planner, _ = load_planner(ckpt, "cpu")
        train, test = load_dataset(args.train, frames=False), load_dataset(args.test, frames=False)
    except (DatasetError, CheckpointUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not 0 <= args.min_history < planner.model.cfg.window:
        p.error(f"--min-history must be in 0..{planner.model.cfg.window - 1}")
    t0 = time.perf_counter()
    ftr = features(planner.model, train, args.train_episodes, args.min_history, not args.quiet)
    fte = features(planner.model, test, len(test.steps), args.min_history, not args.quiet)
    res = {"checkpoint": str(ckpt), "train": str(args.train), "test": str(args.test),
           "train_samples": len(ftr["action"]), "test_samples": len(fte["action"]), "min_history": args.min_history}
    for name in ("context", "tokens"):
        pred, lam = ridge(ftr[name], ftr["action"], fte[name])
        err = np.linalg.norm(pred - fte["action"], axis=1)
        res[name] = {"px_mean": float(err.mean()), "px_median": float(np.median(err)), "lambda": lam,
                     "dims": int(ftr[name].shape[1])}
    err = np.linalg.norm(fte["constvel"] - fte["action"], axis=1)
    res["constvel"] = {"px_mean": float(err.mean()), "px_median": float(np.median(err))}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    for name in ("context", "tokens", "constvel"):
        r = res[name]
        print(f"{name:>9}: {r['px_mean']:5.1f} px (median {r['px_median']:5.1f}) from the expert's a_t")
    print(f"{res['train_samples']} train / {res['test_samples']} test frames, {res['seconds']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
