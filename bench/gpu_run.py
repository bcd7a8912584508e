#!/usr/bin/env python3
"""Turn a short GPU window into results: one prepared script, stages check / bench / train.

    python bench/gpu_run.py --out $OUT                       # all stages (one H200 window)
    python bench/gpu_run.py --out $OUT --stage check,bench   # the CUDA tests of tests/, pytest bench/
    python bench/gpu_run.py --out $OUT --stage train --minutes 4.5 --init runs/gpu_prev/dva
    python bench/gpu_run.py --out $OUT --stage train --minutes 4.5 --init dva/assets/dva_s  # continue the package
    python bench/gpu_run.py --out /tmp/dry --dry-run         # the same on a CPU, tiny, in a minute

Every run first writes OUT/env.json (GPU, driver, torch, Triton, numpy, dvakern's backends) and
refuses (exit 3) when TRITON_INTERPRET is set or dvakern's Triton backend is not active on CUDA
(--dry-run reports it instead). Stages run subprocesses, each with a deadline (then SIGINT, which
makes pytest save its benchmarks and dva.train a checkpoint; then SIGTERM, SIGKILL), and write
their files into OUT as they finish. A missing gym-pusht is installed from ./wheels (docs/gpu.md).
OUT gets at most 8 files (the device tool's limit):
  env.json               environment + each stage's status, times, test counts, score
  check.log              pytest of the CUDA tests of tests/ (-k cuda); counts in env.json
  bench.log, bench.json  pytest bench/; bench.json is bench/results/<device>.json of this run
  train.log              collect, train (+ its log.jsonl / val.jsonl), export, eval output
  dva.safetensors/.json  the exported checkpoint (fp16 EMA; split into .partNN if over 16 MiB)
  eval.json              closed-loop eval on development seeds (never the protocol's)
Exit status: 0 all stages ok, 1 a stage failed, 2 bad arguments, 3 refused (no Triton on CUDA).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dva.data.store import atomic_write_json  # noqa: E402
from dva.model.config import SHIPPED  # noqa: E402

# The shipped recipe (dva.train's defaults: preset s is the package's architecture, losses and
# behaviour levers: action dropout 0.5, the policy loss, the executed action as an input, lever H's
# intent head on the context, here from the first step; docs/policy.md), with checkpoint/validation
# intervals for GPU speed; --data, --steps, --out and --init are added by this script.
TRAIN_ARGS = "--preset s --val-batch 8 --val-every 500 --ckpt-every 500 --log-every 20"
MIX = "0:random=0.05,goal=0.05,approach=0.15,expert=0.75"  # dva.train --mix unless --mix; approach: as the package's last fine-tune
EXPORT_ARGS = "--sampler-steps 1 --warp-anchor on"
STEPS_PER_MINUTE = 600  # a guess for the LR schedule's length (unmeasured on a GPU); the deadline stops it
DATA = {"random": 200, "goal": 100, "approach": 3000, "expert": 1500}  # episodes per source (docs/data.md's datasets)
# a source that is not the policy of its name: approach = the expert's first 20 steps from rest (docs/policy.md)
SOURCE_ARGS = {"approach": ["--policy", "expert", "--seed", 300000, "--max-steps", 20]}
EVAL_SEEDS = "dev"  # dva.eval's development seeds (500000..500099): never the protocol's
CHECK_SELECT = ["-k", "cuda", "--ignore=tests/test_gpu_run.py"]  # gpu-marked tests are named *cuda*; CUDA cases [...-cuda]
LIMITS = {"check": 150, "bench": 240, "collect": 120, "export": 45, "eval": 150}  # seconds, each stage's own
TRAIN_RESERVE = 200  # s kept after training: its wind-down (final val + save), export, eval
TEST_TIMEOUT = 120  # pytest-timeout per test: one hung test fails, the rest still run
MAX_FILE = 16 * 2**20  # the device tool returns files of at most 16 MiB

# --dry-run: tiny shapes, a handful of episodes and steps, the same code path.
SHIPPED_FLAGS = " ".join(  # preset s's heads, losses and levers (dva.model.config.SHIPPED) as dva.train flags
    (f"--{'' if v else 'no-'}{k.replace('_', '-')}" if isinstance(v, bool) else f"--{k.replace('_', '-')} {v}")
    for k, v in SHIPPED.items())
DRY_TRAIN = ("--preset tiny " + SHIPPED_FLAGS + " "  # s's heads and levers on tiny's shapes
             "--seq-len 5 --batch-size 2 --val-batch 2 --val-dream 2 --val-every 0 --ckpt-every 0 "
             "--val-fraction 0.5 --threads 1 --log-every 1")  # 0.5: 4 episodes per source hold train and val ones
DRY = dict(data={"random": 4, "goal": 4, "approach": 4, "expert": 4}, collect_steps=12, steps=2, eval_seeds="500000:500002",
           eval_steps=5, bench_select=["-k", "test_flow_step and ref"], limit=60, budget=170)
STAGES = ("check", "bench", "train")
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu_run {time.strftime('%H:%M:%S')} +{time.monotonic() - T0:4.0f}s] {msg}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/gpu_run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="results folder (created; $OUT under the device tool): only the files listed above")
    p.add_argument("--stage", default="all",
                   help="'all' or a comma list of check, bench, train (run in that order); default: all")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="train stage: minutes of dva.train (cut short so export and eval fit in --budget); default 3")
    p.add_argument("--steps", type=int, default=None,
                   help=f"train stage: dva.train --steps, the LR schedule's length (default: minutes x "
                        f"{STEPS_PER_MINUTE}); the time limit stops training earlier, saving a checkpoint")
    p.add_argument("--init", type=Path, default=None,
                   help="train stage: start from this checkpoint (e.g. a previous window's OUT/dva carried back "
                        "in), so windows add up; default: from scratch")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="train stage: a dataset carried from the dev machine (the device tool's carry), added to "
                        "the ones collected here; for sources that cannot be collected there, e.g. recovery data "
                        "(it starts from a model's visited states). Name it in --mix. Repeatable")
    p.add_argument("--mix", default=None,
                   help=f"train stage: dva.train --mix (default: {MIX}, the sources collected here)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: every stage's limit is cut to what is left, so the script "
                        "ends on its own inside the tool's 600-s command limit (default 570; dry run 170)")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for datasets, the training run, the bench copy and installed wheels "
                        "(default: a new folder under the system temp dir); never inside --out")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU rehearsal: tiny preset, a few episodes and steps, 2 eval seeds of 5 steps, one "
                        "cheap benchmark; reports instead of refusing when Triton/CUDA is missing")
    return p


class Runner:
    def __init__(self, a: argparse.Namespace, stages: list[str]):
        self.a, self.dry, self.out, self.work, self.py = a, a.dry_run, a.out, a.work, sys.executable
        self.end = T0 + (a.budget or (DRY["budget"] if a.dry_run else 570))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", SDL_VIDEODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        if self.dry:
            self.env.setdefault("OMP_NUM_THREADS", "1")  # CI boxes are small
        self.report = {"argv": sys.argv[1:], "stages_requested": stages, "dry_run": self.dry, "stages": {}}

    def left(self) -> float:
        return self.end - time.monotonic()

    def limit(self, name: str) -> float:
        return min(DRY["limit"] if self.dry else LIMITS[name], self.left())

    def save(self) -> None:
        atomic_write_json(self.out / "env.json", self.report)

    def run(self, cmd: list, log_name: str, limit: float, grace: float = 30) -> dict:
        """Run cmd (cwd: the repo) with its output appended to OUT/log_name; at `limit` seconds
        SIGINT its process group, then SIGTERM, then SIGKILL."""
        cmd = [str(c) for c in cmd]
        log(f"$ {shlex.join(cmd)}   (limit {limit:.0f} s)")
        t = time.monotonic()
        with open(self.out / log_name, "a") as f:
            f.write(f"\n[{time.strftime('%H:%M:%S')}] $ {shlex.join(cmd)}\n")
            f.flush()
            # its own process group, to signal it whole; not its own session: the device tool still ends it
            p = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)
            try:
                rc, timed_out = p.wait(timeout=max(limit, 1)), False
            except subprocess.TimeoutExpired:
                log(f"deadline ({limit:.0f} s): stopping it")
                rc, timed_out = stop(p, grace), True
            except BaseException:
                stop(p, 5)
                raise
        res = {"rc": rc, "seconds": round(time.monotonic() - t, 1), "timed_out": timed_out}
        log(f"rc {rc} after {res['seconds']} s" + (" (deadline)" if timed_out else ""))
        return res


def stop(p: subprocess.Popen, grace: float) -> int:
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            return p.wait(timeout=wait)


def ensure_gym_pusht(r: Runner) -> str | None:
    """gym-pusht and its needs are not in the GPU image: install ./wheels (docs/gpu.md) into WORK/site.
    Returns why that failed, or None."""
    probe = [r.py, "-c", "import gym_pusht, pymunk, shapely, pygame"]
    if subprocess.run(probe, cwd=ROOT, env=r.env, capture_output=True).returncode == 0:
        return None
    wheels = sorted(str(w) for w in (ROOT / "wheels").glob("*.whl"))
    if not wheels:
        return "gym-pusht is not importable and ./wheels holds no wheels: fill it (docs/gpu.md) and carry it"
    log(f"installing {len(wheels)} wheels from ./wheels into {r.work / 'site'}")
    pip = subprocess.run([r.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--target", str(r.work / "site"), *wheels], capture_output=True, text=True)
    r.env["PYTHONPATH"] += os.pathsep + str(r.work / "site")
    r.report["wheels_installed"] = [Path(w).name for w in wheels]
    if pip.returncode or subprocess.run(probe, cwd=ROOT, env=r.env, capture_output=True).returncode:
        return f"installing ./wheels failed: {pip.stdout[-1500:]}{pip.stderr[-1500:]}"
    return None


PROBE = r"""
import json, os, platform, sys, importlib.metadata as md
import numpy, torch, dvakern
r = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
     "numpy": numpy.__version__, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
     "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"), "dvakern": dvakern.info(),
     "triton": __import__("triton").__version__ if dvakern.info()["triton"] else None,
     "gym_pusht": md.version("gym-pusht")}
if torch.cuda.is_available():
    pr = torch.cuda.get_device_properties(0)
    r.update(gpu=pr.name, gpu_capability=f"{pr.major}.{pr.minor}", gpu_mem_gib=round(pr.total_memory / 2**30, 1))
print(json.dumps(r))
"""


def preflight(r: Runner) -> list[str]:
    """env.json; returns why the run must not go on (empty: fine)."""
    from dva.checkpoint import git_commit

    deps = ensure_gym_pusht(r)
    try:
        p = subprocess.run([r.py, "-c", PROBE], cwd=ROOT, env=r.env, capture_output=True, text=True, timeout=120)
        env = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"probe_error": p.stderr[-2000:]}
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        env = {"probe_error": repr(e)}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["nvidia_smi"] = f"unavailable: {e}"
    env.update(commit=git_commit(), when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    r.report["env"] = env
    why = []
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        why.append("TRITON_INTERPRET is set: Triton kernels would run in the interpreter")
    k = env.get("dvakern", {})
    if "probe_error" in env:
        why.append("the environment probe failed (see env.probe_error)")
    elif not (k.get("cuda") and k.get("triton") and not k.get("interpreter") and k.get("backend") != "ref"):
        why.append(f"dvakern's Triton backend is not active on CUDA: {k}")
    fatal = ([deps] if deps else []) + ([] if r.dry else why)  # a dry run reports the rest
    r.report.update(refusal=fatal, **({"refusal_would_be": why} if r.dry else {}))
    r.save()
    log(f"env: {env.get('gpu', 'no GPU')}, torch {env.get('torch')}, triton {env.get('triton')}, "
        f"numpy {env.get('numpy')}, dvakern {k.get('backend')}/triton={k.get('triton')}/cuda={k.get('cuda')}")
    return fatal


def junit_summary(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"junit": f"unreadable: {e}"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    return {**counts, "failed_tests": bad[:50]}


def stage_check(r: Runner) -> dict:
    xml = r.work / "check.xml"
    res = r.run([r.py, "-m", "pytest", "-q", "tests", *CHECK_SELECT, f"--junitxml={xml}", "-p", "no:cacheprovider",
                 f"--timeout={TEST_TIMEOUT}"], "check.log", r.limit("check"))
    res.update(junit_summary(xml))
    res["ok"] = res["rc"] == 0
    return res


def stage_bench(r: Runner) -> dict:
    """pytest bench/ on a copy of bench/, so the results file is this run's alone and a dry run never
    rewrites the tracked bench/results/*.json; bench/conftest.py writes it at the session's end
    (also after the SIGINT of the deadline)."""
    copy = r.work / "benchrun"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ROOT / "bench", copy / "bench", ignore=shutil.ignore_patterns("results", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    res = r.run([r.py, "-m", "pytest", "-q", copy / "bench", "--rootdir", copy, "-c", copy / "pyproject.toml",
                 "-p", "no:cacheprovider", f"--timeout={TEST_TIMEOUT}", *(DRY["bench_select"] if r.dry else [])],
                "bench.log", r.limit("bench"), grace=45)
    found = sorted((copy / "bench" / "results").glob("*.json"))
    if found:
        shutil.copy(found[0], r.out / "bench.json")
        res["benchmarks"] = len(json.loads(found[0].read_text())["benchmarks"])
        res["results_file"] = f"bench/results/{found[0].name}"
    res["ok"] = res["rc"] == 0 and bool(found)
    return res


def stage_train(r: Runner) -> dict:
    a, res, data = r.a, {}, r.work / "data"
    workers = os.cpu_count()
    collect_end = time.monotonic() + r.limit("collect")  # one deadline for all sources; the slow expert last
    for name, n in (DRY["data"] if r.dry else DATA).items():
        res[f"collect_{name}"] = r.run([r.py, "-m", "dva.collect", *SOURCE_ARGS.get(name, ["--policy", name]),
                                        "--episodes", n, "--workers",
                                        workers, "--out", data / name, "--quiet",
                                        *(["--max-steps", DRY["collect_steps"]] if r.dry else [])],
                                       "train.log", collect_end - time.monotonic(), grace=15)
    # what export, eval and the train's own wind-down (final validation + save) need after the deadline
    run_dir, reserve = r.work / "run", (40 if r.dry else TRAIN_RESERVE)
    seconds = min(a.minutes * 60, r.left() - reserve)
    if seconds < (5 if r.dry else 30):
        res["train"] = {"skipped": f"only {r.left():.0f} s of --budget left"}
        return {**res, "ok": False}
    steps = DRY["steps"] if r.dry else (a.steps or max(1, round(a.minutes * STEPS_PER_MINUTE)))
    sources = {**{name: data / name for name in DATA}, **a.data}  # collected here, then carried in
    cmd = [r.py, "-m", "dva.train", *shlex.split(TRAIN_ARGS), *(shlex.split(DRY_TRAIN) if r.dry else []),
           "--mix", a.mix or MIX,
           *[x for name, path in sources.items() for x in ("--data", f"{name}={path}")], "--steps", steps,
           "--out", run_dir, *(["--init", a.init] if a.init else [])]
    res["train"] = r.run(cmd, "train.log", seconds, grace=90)
    with open(r.out / "train.log", "a") as f:  # the curves travel inside train.log (8 files at most)
        for name in ("log.jsonl", "val.jsonl"):
            if (run_dir / name).exists():
                f.write(f"\n==== {name} ====\n{(run_dir / name).read_text()}")
    if not (run_dir / "ckpt.json").exists():
        return {**res, "ok": False}
    meta = json.loads((run_dir / "ckpt.json").read_text())
    res["train"].update(step=meta.get("step"), val=meta.get("metrics"))
    stem = r.work / "export" / "dva"
    stem.parent.mkdir(exist_ok=True)
    res["export"] = r.run([r.py, "-m", "dva.checkpoint", "export", run_dir / "ckpt", stem, *shlex.split(EXPORT_ARGS)],
                          "train.log", r.limit("export"))
    if res["export"]["rc"] != 0:
        return {**res, "ok": False}
    res["export"]["files"] = deliver(stem, r.out)
    res["eval"] = r.run([r.py, "-m", "dva.eval", "--policy", "dva", "--checkpoint", stem, "--seeds",
                         DRY["eval_seeds"] if r.dry else EVAL_SEEDS, "--workers", 1 if r.dry else workers,
                         "--out", r.out / "eval.json", "--quiet",
                         *(["--max-steps", DRY["eval_steps"]] if r.dry else [])], "train.log", r.limit("eval"))
    if (r.out / "eval.json").exists():
        ev = json.loads((r.out / "eval.json").read_text())
        res["eval"].update(score=ev.get("score"), success=ev.get("success"), seeds=ev.get("seeds"))
    return {**res, "ok": all(v.get("rc") == 0 for v in res.values()) and "score" in res["eval"]}


def deliver(stem: Path, out: Path) -> list[str]:
    """Copy an exported checkpoint into OUT; a tensor file over 16 MiB is split into .partNN pieces
    (join them with `cat dva.safetensors.part* > dva.safetensors`)."""
    st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    shutil.copy(js, out / js.name)
    if st.stat().st_size <= MAX_FILE:
        shutil.copy(st, out / st.name)
        return [js.name, st.name]
    data, names = st.read_bytes(), []
    for i in range(0, len(data), MAX_FILE):
        names.append(f"{st.name}.part{i // MAX_FILE:02d}")
        (out / names[-1]).write_bytes(data[i:i + MAX_FILE])
    log(f"{st.name} is {st.stat().st_size / 2**20:.1f} MiB: split into {len(names)} parts (8 files come back at most)")
    return [js.name, *names]


def brief(res: dict) -> str:
    t, e = res.get("train", {}), res.get("eval", {})
    keys = dict(tests=res.get("tests"), failures=res.get("failures"), errors=res.get("errors"),
                benchmarks=res.get("benchmarks"), seconds=res.get("seconds"), train_step=t.get("step"),
                train_s=t.get("seconds"), score=e.get("score"), success=e.get("success"), error=res.get("error"))
    return ", ".join(f"{k} {v if not isinstance(v, float) else round(v, 3)}" for k, v in keys.items() if v is not None)


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    stages = list(STAGES) if a.stage == "all" else [s.strip() for s in a.stage.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        p.error(f"--stage: unknown stage(s) {bad or [a.stage]}; choose 'all' or a comma list of {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    if a.minutes <= 0 or (a.steps is not None and a.steps < 1) or (a.budget is not None and a.budget <= 0):
        p.error("--minutes, --steps and --budget must be positive")
    if a.init is not None:
        from dva.checkpoint import paths
        if not paths(a.init)[0].is_file():
            p.error(f"--init {a.init}: no such checkpoint ({paths(a.init)[0]})")
        a.init = a.init.resolve()
    carried = {}
    for spec in a.data:
        name, _, path = spec.partition("=")
        if not name or not path:
            p.error(f"--data {spec!r}: give NAME=PATH")
        if name in DATA or name in carried:
            p.error(f"--data {name}: the name is taken (collected here: {', '.join(DATA)}; or given twice)")
        if not (Path(path) / "manifest.json").is_file():
            p.error(f"--data {name}={path}: not a dva.collect dataset (no manifest.json)")
        carried[name] = Path(path).resolve()
    if carried and not a.mix:
        p.error(f"--data {', '.join(carried)}: give a --mix that names it (the default mix does not)")
    a.data = carried
    a.out = a.out.resolve()
    try:
        a.out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=a.out).close()
    except OSError as e:
        p.error(f"--out {a.out}: not a writable folder ({e.strerror or e})")
    a.work = (a.work or Path(tempfile.mkdtemp(prefix="dva_gpu_run_"))).resolve()
    if a.work == a.out or a.out in a.work.parents:
        p.error("--work must not be inside --out (only 8 files come back from the device)")
    a.work.mkdir(parents=True, exist_ok=True)
    # children must not inherit an ignored SIGINT (background jobs): the deadline's SIGINT must reach them
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped run stops its stage's group too
    r = Runner(a, stages)
    log(f"stages {stages}{' (dry run)' if r.dry else ''}; out {a.out}; work {a.work}; budget {r.left():.0f} s")
    why = preflight(r)
    if why:
        log("refusing: " + "; ".join(why))
        return 3
    for name in stages:
        log(f"== {name} ({r.left():.0f} s of the budget left)")
        try:
            res = {"check": stage_check, "bench": stage_bench, "train": stage_train}[name](r)
        except KeyboardInterrupt:  # the stage's process group was stopped by Runner.run
            res = {"ok": False, "error": "interrupted (SIGINT/SIGTERM)"}
        except Exception as e:  # one broken stage must not cost the others their time
            res = {"ok": False, "error": repr(e)}
        r.report["stages"][name] = res
        r.save()
        if "interrupted" in res.get("error", ""):
            return 130
        log(f"== {name}: {'ok' if res.get('ok') else 'FAILED'} ({brief(res)})")
    r.report["seconds"] = round(time.monotonic() - T0, 1)
    r.save()
    files = sorted(f.name for f in a.out.iterdir())
    log(f"done in {r.report['seconds']} s; {len(files)} files in {a.out}: {' '.join(files)}")
    done = r.report["stages"]
    for name in stages:  # the tool's reply carries the end of the output: the summary goes last
        print(f"  {name:6s} {'ok    ' if done[name].get('ok') else 'FAILED'} {brief(done[name])}")
    return 0 if all(done[s].get("ok") for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
