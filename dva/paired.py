"""Paired comparison of two policies on the same seeds or plans, with its standard error.

    python -m dva.paired runs/eval_dev_old.json runs/eval_dev_new.json     # dva.eval JSONs: per-seed score
    python -m dva.paired runs/ol_old.json runs/ol_new.json                 # dva.openloop JSONs: per-plan px
    python -m dva.paired dev_old.json dev_new.json fresh_old.json fresh_new.json   # pairs pooled over their seeds
    python -m dva.paired --base old_500000.json old_500050.json --new new_dev100.json   # each side pooled

The difference NEW - BASE is taken per seed (closed loop: episode score and success) or per plan
(open loop: the first free action's error in px), so the shared difficulty of a seed cancels; the
standard error is std(differences) / sqrt(n).

The ship rule (docs/policy.md), printed as the last line for two dva.eval runs on the development
seeds: NEW replaces BASE when its score is higher by at least 2 standard errors, or when its success
is higher by at least 2 standard errors and its score is not lower by more than 1. (The score,
mean max coverage / 0.95 clipped at 1, barely moves when an episode at 0.93 coverage is finished,
so success is read as well.)
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np


def per_item(d: dict, path: Path) -> dict[str, dict]:
    """-> {what is compared: {key: value}} from a dva.eval or dva.openloop JSON."""
    if "episodes" in d and isinstance(d["episodes"], list):
        return {"score per seed": {e["seed"]: e["score"] for e in d["episodes"]},
                "success per seed": {e["seed"]: float(e["success"]) for e in d["episodes"]}}
    if "first_free_px_per_plan" in d:
        return {"first free action px per plan": dict(enumerate(d["first_free_px_per_plan"]))}
    raise ValueError(f"{path}: neither a dva.eval JSON (episodes) nor a dva.openloop one (first_free_px_per_plan)")


def paired(base: dict, new: dict) -> dict:
    keys = sorted(set(base) & set(new))
    if len(keys) < 2 or len(keys) != len(base) or len(keys) != len(new):
        raise ValueError(f"the two runs must cover the same seeds or plans (have {len(base)} and {len(new)}, "
                         f"{len(keys)} shared)")
    diff = np.array([new[k] - base[k] for k in keys], dtype=np.float64)
    return {"n": len(keys), "base_mean": float(np.mean([base[k] for k in keys])),
            "new_mean": float(np.mean([new[k] for k in keys])), "diff_mean": float(diff.mean()),
            "diff_se": float(diff.std(ddof=1) / np.sqrt(len(keys)))}


def ships(score: dict, success: dict) -> bool:
    """The ship rule on paired() results for score and success (module docstring)."""
    return (score["diff_mean"] >= 2 * score["diff_se"] or
            (success["diff_mean"] >= 2 * success["diff_se"] and score["diff_mean"] >= -score["diff_se"]))


def load(path: Path) -> dict[str, dict]:
    try:
        return per_item(json.loads(path.read_text()), path)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a JSON ({e})") from None


def pooled(paths: list[Path]) -> dict[str, dict]:
    """per_item of several runs on disjoint seeds, merged (e.g. the dev seeds and a fresh set)."""
    out: dict[str, dict] = {}
    for f in paths:
        d = load(f)
        if out and d.keys() != out.keys():
            raise ValueError(f"{f} holds {', '.join(d)}; {paths[0]} holds {', '.join(out)}")
        for what, items in d.items():
            both = set(items) & set(out.setdefault(what, {}))
            if both:
                raise ValueError(f"{f}: seed or plan {min(both)} is also in an earlier run; pooled runs "
                                 f"must cover disjoint seeds")
            out[what].update(items)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dva.paired", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="*", metavar="BASE NEW",
                   help="the reference run's JSON, then the candidate's (same kind, same seeds or plans); "
                        "more pairs (BASE2 NEW2 ...) on other seeds are pooled with the first")
    p.add_argument("--base", type=Path, nargs="+", default=[], metavar="JSON",
                   help="instead of pairs: the reference's runs, pooled over their (disjoint) seeds")
    p.add_argument("--new", type=Path, nargs="+", default=[], metavar="JSON",
                   help="with --base: the candidate's runs, pooled; together they cover the same seeds")
    a = p.parse_args(argv)
    if a.base or a.new:
        if a.runs or not (a.base and a.new):
            p.error("give either BASE NEW pairs or both --base and --new")
        bases, news = a.base, a.new
    elif not a.runs or len(a.runs) % 2:
        p.error(f"give JSONs in pairs, BASE NEW [BASE2 NEW2 ...]; got {len(a.runs)}")
    else:
        bases, news = a.runs[0::2], a.runs[1::2]
    try:
        base, new = pooled(bases), pooled(news)
        if base.keys() != new.keys():
            raise ValueError(f"{bases[0]} holds {', '.join(base)}; {news[0]} holds {', '.join(new)}")
        res = {what: paired(base[what], new[what]) for what in base}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what, r in res.items():
        print(f"{what}: base {r['base_mean']:.3f}, new {r['new_mean']:.3f}, new - base "
              f"{r['diff_mean']:+.3f} +- {r['diff_se']:.3f} (standard error, n = {r['n']})")
    if "success per seed" in res:  # where the success difference comes from (McNemar's discordant pairs)
        b, n = base["success per seed"], new["success per seed"]
        count = lambda x, y: sum(b[k] == x and n[k] == y for k in b)  # noqa: E731
        print(f"success outcomes: both {count(1, 1)}, base only {count(1, 0)}, new only {count(0, 1)}, "
              f"neither {count(0, 0)}")
    if "score per seed" in res:
        ok = ships(res["score per seed"], res["success per seed"])
        print(f"ship rule: {'NEW beats BASE' if ok else 'NEW does not beat BASE'}")
    return 0


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `| head` closing the pipe ends the command quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
