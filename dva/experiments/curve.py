"""Issue 21 item 3: lever H's learning curve, the policy metrics against the predicted frames of
behaviour training (after the world-model stages), from the runs' own files. Each run must be a
`--init` child of the one before it (lever_h.sh's chain); frames = steps x batch x (seq_len - 1).

    python dva/experiments/curve.py runs/s28 runs/s29 ... --ol runs/ol_{}.json --dev runs/eval_dev_{}.json \
        --out docs/policy/curve_h.json
prints a markdown table and a least-squares fit of the open-loop error against log10(frames).
"""
import argparse
import json
import math
from pathlib import Path

from dva.data.store import atomic_write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders in training order (each --init from the last)")
    p.add_argument("--ol", default="runs/ol_{}.json", help="open-loop JSON per run name ({} = folder name)")
    p.add_argument("--dev", default="runs/eval_dev_{}.json", help="dev-seed eval JSON per run name (optional)")
    p.add_argument("--out", type=Path, default=None, help="write the rows and the fit here as JSON")
    a = p.parse_args(argv)

    def read(path):
        try:
            return json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"{path}: {e}")

    rows, frames, prev = [], 0, None
    for run in a.runs:
        meta = read(run / "ckpt.json")
        t = meta["train"]
        if prev is not None and Path(t["init"]).resolve().parent != prev.resolve():
            p.error(f"{run}: trained --init {t['init']}, not from {prev}/ckpt: not one chain")
        frames += meta["step"] * t["batch_size"] * (t["seq_len"] - 1)
        ol = read(a.ol.format(run.name))
        dev_path = Path(a.dev.format(run.name))
        dev = read(dev_path) if dev_path.exists() else None
        rows.append(dict(run=run.name, frames=frames, first_free_px=round(ol["first_free_px"], 3),
                         median_px=round(ol["first_free_px_median"], 3), cos=round(ol["first_free_cos_mean"], 3),
                         dev_score=None if dev is None else round(dev["score"], 3),
                         dev_success=None if dev is None else dev["success"]))
        prev = run
    xs = [math.log10(r["frames"]) for r in rows]
    ys = [r["first_free_px"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")
    fit = dict(px_per_decade=round(slope, 2), intercept=round(my - slope * mx, 2),
               note="first free action px = intercept + px_per_decade * log10(frames)")
    print("| run | behaviour frames | first free action px (median) | cos | dev score (success) |")
    print("|---|---|---|---|---|")
    for r in rows:
        dev = "" if r["dev_score"] is None else f"{r['dev_score']:.3f} ({r['dev_success']:.0%})"
        print(f"| {r['run']} | {r['frames'] / 1e3:.1f}k | {r['first_free_px']:.1f} ({r['median_px']:.1f}) | "
              f"{r['cos']:.2f} | {dev} |")
    print(f"fit: {fit['intercept']:.2f} {fit['px_per_decade']:+.2f} px per decade of frames")
    if a.out:
        atomic_write_json(a.out, dict(rows=rows, fit=fit))


if __name__ == "__main__":
    main()
