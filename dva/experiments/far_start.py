"""Where the DVA loses to BC: by the disc's distance from the T (issue 21 diagnostic, 2026-12-05).

    python dva/experiments/far_start.py --ol runs/ol_s38r.json runs/ol_s39r.json \
        --dev runs/eval_dev_s38r.json runs/eval_dev_s39r.json --peer runs/eval_dev_bc_x1.json

--ol: `dva.openloop` JSONs on data/expert_dev (every 5th step, horizon 4): the first free action's
error split by the disc's distance from the T's centre at the plan's step. --dev: `dva.eval`
JSONs on the same seeds: the score split by that distance at the episode's start, and the seeds
that none of them ever touched the T on; --peer: one more eval JSON shown beside them.
"""
import argparse
import json

import numpy as np

from dva.openloop import load_dataset
from dva.pusht.env import PushTEnv
from dva.pusht.policies import block_center

BINS = ((0, 150), (150, 250), (250, 320), (320, 1000))


def disc_t(state) -> float:
    return float(np.linalg.norm(state[:2] - block_center(state)))


def openloop_table(files, data, every=5, horizon=4):
    ds = load_dataset(data, frames=False)
    d = []  # the same plan order as dva.openloop.evaluate
    for e in range(len(ds.steps)):
        arr = ds.episode_arrays(e)
        d += [disc_t(arr["states"][t]) for t in range(0, len(arr["actions"]) - horizon + 1, every)]
    d = np.array(d)
    for f in files:
        err = np.array(json.load(open(f))["first_free_px_per_plan"])
        if len(err) != len(d):
            raise SystemExit(f"{f}: {len(err)} plans, but {data} gives {len(d)} at --every {every} --horizon {horizon}: "
                             "an open-loop run of other data or settings")
        cells = [f"{lo}-{hi} px: {err[(d >= lo) & (d < hi)].mean():5.1f} (n {((d >= lo) & (d < hi)).sum()})" for lo, hi in BINS]
        print(f"open loop {f}: first free action px by disc-T distance: " + " | ".join(cells))


def dev_table(files, peer):
    runs = [{e["seed"]: e for e in json.load(open(f))["episodes"]} for f in files]
    seeds = sorted(runs[0])
    env = PushTEnv(pixels=False)
    d = np.array([disc_t(env.reset(s)[0]["state"]) for s in seeds])
    score = np.array([[r[s]["score"] for s in seeds] for r in runs])  # (runs, seeds)
    never = np.array([all(r[s]["first_contact_step"] is None for r in runs) for s in seeds])
    ps = np.array([{e["seed"]: e["score"] for e in json.load(open(peer))["episodes"]}[s] for s in seeds]) if peer else None
    for lo, hi in BINS:
        m = (d >= lo) & (d < hi)
        print(f"start disc-T {lo}-{hi} px: {m.sum():2d} seeds, mean score of the {len(files)} runs {score[:, m].mean():.2f}, "
              f"never touched by any {never[m].sum()}" + (f", peer {ps[m].mean():.2f}" if peer else ""))
    print("never touched by any run:", [(s, round(x)) for s, x, n in zip(seeds, d, never) if n])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ol", nargs="*", default=[])
    p.add_argument("--data", default="data/expert_dev")
    p.add_argument("--dev", nargs="*", default=[])
    p.add_argument("--peer", default=None)
    a = p.parse_args()
    if a.ol:
        openloop_table(a.ol, a.data)
    if a.dev:
        dev_table(a.dev, a.peer)


if __name__ == "__main__":
    main()
