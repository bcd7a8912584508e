"""Collect PushT episodes with a data policy into a checksummed dataset directory.

    python -m dva.collect --policy random --episodes 200 --workers 2 --out data/random

Episode i uses env seed (--seed + i) for both gym-pusht's reset and the policy, so a dataset is
a deterministic function of its config. Re-running the same command resumes: every shard listed
in the manifest is verified (size and sha256), good ones are kept, a missing, truncated or
altered one is named and collected again, and only missing episodes are collected (an interrupt
loses at most the shards in flight); re-running with a larger --episodes extends the dataset. State-only shards
by default (the loader re-renders frames exactly); --frames also stores gym-pusht's pixels.

Recovery data (DAgger for a video policy): with --start-states FILE (an .npz of `states` (N, 5)
and `agent_vel` (N, 2), e.g. written by `python -m dva.eval --policy dva --states-out FILE`),
episode i starts from row i of that file instead of the seed's random start, so the privileged
expert shows the way back from the states a learned policy actually visits:

    python -m dva.eval --policy dva --seeds 700000:700050 --states-out runs/visited.npz
    python -m dva.collect --policy expert --start-states runs/visited.npz --episodes 500 --out data/recovery
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dva.data.store import DatasetError, Episode, Manifest, read_shard, shard_name, write_shard
from dva.pusht.protocol import MAX_STEPS, SEEDS


@dataclass
class CollectConfig:
    policy: str
    seed: int = 0                 # episode i uses env/policy seed `seed + i`
    max_steps: int = MAX_STEPS    # an episode also ends at success (gym-pusht terminates)
    shard_size: int = 4           # episodes per shard: the most an interrupt loses per worker
    frames: bool = False          # also store gym-pusht's 96x96 pixels
    policy_kwargs: dict = field(default_factory=dict)
    start_states: str = ""        # .npz of start states (row i starts episode i); "" = the seed's start
    start_states_sha256: str = ""  # of that file: a resumed run must start from the same states
    latency_ms: float = 0.0       # each action lands this late into its step (dva.eval --latency-ms)

    # a resumed run must agree on everything that shapes the data (latency 0 is left out: the
    # manifests written before the option existed)
    def identity(self) -> dict:
        d = asdict(self)
        if not d["latency_ms"]:
            del d["latency_ms"]
        return d


def load_start_states(path) -> dict[str, np.ndarray]:
    """The arrays of a --start-states file, checked; DatasetError naming the file and the reason."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: np.asarray(z[k], dtype=np.float64) for k in ("states", "agent_vel")}
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"--start-states {path}: cannot read the 'states' and 'agent_vel' arrays ({e})") from None
    n = len(d["states"])
    if d["states"].shape != (n, 5) or d["agent_vel"].shape != (n, 2) or not n:
        raise DatasetError(f"--start-states {path}: need states (N, 5) and agent_vel (N, 2) with N >= 1, got "
                           f"{d['states'].shape} and {d['agent_vel'].shape}")
    if not (np.isfinite(d["states"]).all() and np.isfinite(d["agent_vel"]).all()):
        raise DatasetError(f"--start-states {path}: non-finite values")
    return d


def collect_episode(policy, env, seed: int, max_steps: int, start=None, latency_ms: float = 0.0) -> Episode:
    from dva.pusht.protocol import run_episode

    _, tr = run_episode(policy, seed, env, max_steps, record=True, start=start, latency_ms=latency_ms)
    return Episode(seed=seed, states=np.stack(tr["states"]), agent_vel=np.stack(tr["agent_vel"]),
                   actions=np.stack(tr["actions"]), coverage=np.asarray(tr["coverage"], np.float32),
                   frames=np.stack(tr["frames"]) if tr["frames"][0] is not None else None)


_WORKER: dict = {}


def _collect_shard(task) -> dict:
    """Worker: collect episodes [first, first + n) and write their shard atomically."""
    cfg_dict, out, first, n = task
    cfg = CollectConfig(**cfg_dict)
    from dva.pusht.env import PushTEnv
    from dva.pusht.policies import make_policy

    key = repr(sorted(cfg_dict.items()))
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, policy=make_policy(cfg.policy, **cfg.policy_kwargs),
                       env=PushTEnv(pixels=cfg.frames),
                       starts=load_start_states(cfg.start_states) if cfg.start_states else None)
    st = _WORKER["starts"]
    eps = [collect_episode(_WORKER["policy"], _WORKER["env"], cfg.seed + i, cfg.max_steps,
                           None if st is None else (st["states"][i], st["agent_vel"][i]), cfg.latency_ms)
           for i in range(first, first + n)]
    return write_shard(Path(out) / shard_name(first), first, eps)


def code_version(policy: str) -> dict:
    """What generated the data: the policy's source file hash (catches an expert edited between
    runs, committed or not) and the git commit of the checkout, when there is one."""
    import hashlib
    import importlib.util
    import subprocess

    from dva.pusht.policies import POLICIES

    module = POLICIES[policy].split(":")[0]
    spec = importlib.util.find_spec(module)
    src = Path(spec.origin) if spec and spec.origin else None
    files = [src] if src else []
    if src:  # plus the dva.pusht modules it imports (the expert's simulator copy)
        for dep in sorted(set(re.findall(r"^from (?:dva\.pusht)?\.?(\w+) import", src.read_text(), re.M))):
            f = src.parent / f"{dep}.py"
            if f.is_file() and f != src:
                files.append(f)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    out = {"policy_source": module, "policy_source_files": [f.name for f in files],
           "policy_source_sha256": h.hexdigest() if files else None}
    try:
        root = Path(__file__).resolve().parent.parent
        out["git_commit"] = subprocess.check_output(["git", "-C", str(root), "rev-parse", "HEAD"], text=True,
                                                    stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "-C", str(root), "status", "--porcelain", "--", *map(str, files)],
                                        text=True, stderr=subprocess.DEVNULL).strip() if files else ""
        out["policy_source_uncommitted"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def plan_shards(manifest: Manifest, episodes: int, shard_size: int) -> list[tuple[int, int]]:
    """(first, n) of the shards still missing to cover episodes [0, episodes)."""
    done = np.zeros(episodes, dtype=bool)
    for s in manifest.shards:
        done[s["first_episode"]:s["first_episode"] + s["episodes"]] = True
    todo, i = [], 0
    while i < episodes:
        if done[i]:
            i += 1
            continue
        j = i
        while j < episodes and not done[j] and j - i < shard_size:
            j += 1
        todo.append((i, j - i))
        i = j
    return todo


def drop_bad_shards(man: Manifest, out: Path, progress: bool = True) -> list[str]:
    """Check every shard the manifest lists against its entry (size, sha256, counts). A missing,
    truncated or altered one is dropped from the manifest, so its episodes are collected again
    (they are a deterministic function of the config), and its file is kept as *.bad for a look.
    Returns one line per bad shard, naming the file and the reason."""
    from tqdm import tqdm

    keep, bad = [], []
    for entry in tqdm(man.shards, desc=f"verify {out.name}", unit="shard", disable=not progress):
        try:
            read_shard(out / entry["file"], entry, frames=False)
            keep.append(entry)
        except DatasetError as e:
            bad.append(str(e))
            if (out / entry["file"]).exists():
                (out / entry["file"]).replace(out / (entry["file"] + ".bad"))
    if bad:
        man.shards = keep
        man.save(out)
    return bad


def collect(cfg: CollectConfig, out: Path, episodes: int, workers: int = 1, progress: bool = True) -> Manifest:
    """Collect (or resume collecting) `episodes` episodes into `out`. Returns the manifest."""
    from tqdm import tqdm

    from dva.pusht.env import gym_pusht_version

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.json").exists():
        man = Manifest.load(out)
        old = man.config.get("collect", {})
        new = cfg.identity()
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        if diff:
            raise DatasetError(f"{out / 'manifest.json'}: dataset was collected with a different config "
                               f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                               f"use another --out")
        code = code_version(cfg.policy)
        old_code = man.config.get("code", {})
        if old_code.get("policy_source_sha256") != code["policy_source_sha256"]:
            raise DatasetError(f"{out / 'manifest.json'}: the {cfg.policy} policy's source ({code['policy_source']}) "
                               f"changed since this dataset was started (sha256 "
                               f"{str(old_code.get('policy_source_sha256'))[:12]}... there, "
                               f"{code['policy_source_sha256'][:12]}... now); use another --out")
        if man.gym_pusht_version != gym_pusht_version():
            raise DatasetError(f"{out / 'manifest.json'}: collected with gym-pusht {man.gym_pusht_version}, "
                               f"this is {gym_pusht_version()} (seeds are not comparable across versions)")
        for line in drop_bad_shards(man, out, progress):
            print(f"warning: {line}; its episodes are collected again (the file is kept as .bad)", file=sys.stderr)
    else:
        man = Manifest(config={"collect": cfg.identity(), "code": code_version(cfg.policy)},
                       gym_pusht_version=gym_pusht_version())
        man.save(out)
    todo = plan_shards(man, episodes, cfg.shard_size)
    overlap = sorted(set(range(cfg.seed, cfg.seed + episodes)) & set(SEEDS))
    if overlap:
        print(f"warning: collection seeds include evaluation seeds {overlap[0]}..{overlap[-1]}", file=sys.stderr)
    done_eps = min(man.episodes, episodes)
    bar = tqdm(total=episodes, initial=done_eps, unit="ep", desc=f"collect {cfg.policy}",
               disable=not progress, smoothing=0.1)
    t0, frames = time.perf_counter(), 0
    tasks = [(cfg.identity(), str(out), first, n) for first, n in todo]

    def record(entry: dict) -> None:
        nonlocal frames
        man.shards = sorted(man.shards + [entry], key=lambda s: s["first_episode"])
        man.save(out)  # after every shard: an interrupt loses only what is in flight
        frames += entry["steps"] + entry["episodes"]
        bar.update(entry["episodes"])
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{frames / dt:,.0f} frames/s")

    try:
        if workers <= 1:
            for t in tasks:
                record(_collect_shard(t))
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for entry in pool.imap_unordered(_collect_shard, tasks):
                    record(entry)
    finally:
        bar.close()
    return man


def build_parser() -> argparse.ArgumentParser:
    from dva.pusht.policies import POLICIES

    p = argparse.ArgumentParser(prog="python -m dva.collect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, choices=[k for k in sorted(POLICIES) if k != "dva"],
                   help="data policy: random smooth motion, goal heuristic, or the privileged expert")
    p.add_argument("--episodes", type=int, required=True, help="total episodes the dataset should hold")
    p.add_argument("--workers", type=int, default=1, help="worker processes (use all cores for big datasets)")
    p.add_argument("--out", type=Path, required=True, help="dataset directory (created; resumed if it exists)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses env/policy seed SEED + i")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS, help="steps per episode (ends early at success)")
    p.add_argument("--shard-size", type=int, default=4, help="episodes per shard file")
    p.add_argument("--frames", action="store_true", help="also store gym-pusht's 96x96 uint8 frames")
    p.add_argument("--start-states", type=Path, default=None,
                   help="recovery data: an .npz of states (N, 5) and agent_vel (N, 2) (`python -m dva.eval "
                        "--states-out`); episode i starts from row i, so --episodes <= N")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="each action lands this long into its step, in [0, 100): the physics tracks the previous "
                        "target until then (data under a controller's timing; dva.eval --latency-ms)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("episodes", "workers", "max_steps", "shard_size"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    start = {}
    if args.start_states is not None:
        from dva.data.store import sha256_file

        try:
            n = len(load_start_states(args.start_states)["states"])
        except DatasetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.episodes > n:
            print(f"error: --episodes {args.episodes} > the {n} start states in {args.start_states}", file=sys.stderr)
            return 2
        start = {"start_states": str(args.start_states.resolve()), "start_states_sha256": sha256_file(args.start_states)}
    from dva.pusht.env import hold_substeps_for

    try:
        hold_substeps_for(args.latency_ms)  # the one place that knows the range
    except ValueError as e:
        print(f"error: --latency-ms: {e}", file=sys.stderr)
        return 2
    cfg = CollectConfig(policy=args.policy, seed=args.seed, max_steps=args.max_steps,
                        shard_size=args.shard_size, frames=args.frames, latency_ms=args.latency_ms, **start)

    def stop(signum, frame):  # SIGTERM (and SIGINT in background jobs, where it is ignored)
        raise KeyboardInterrupt

    import signal

    signal.signal(signal.SIGTERM, stop)
    t0 = time.perf_counter()
    try:
        man = collect(cfg, args.out, args.episodes, args.workers, progress=not args.quiet)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: completed shards are kept in {args.out}; re-run the same command to resume",
              file=sys.stderr)
        return 130
    dt = time.perf_counter() - t0
    print(f"{args.out}: {man.episodes} episodes, {man.steps + man.episodes} frames "
          f"({sum(s['bytes'] for s in man.shards) / 2**20:.1f} MiB, {len(man.shards)} shards); "
          f"this run {dt:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
