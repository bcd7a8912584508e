"""bench/gpu_run.py, the script that spends a GPU window, rehearsed on the CPU: `--dry-run` runs
every stage (check, bench, collect + train + export + eval) with tiny shapes in about a minute and
must leave the files the device tool brings back; bad input and a Triton interpreter are refused."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dva import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_run.py"
FILES = {"env.json", "check.log", "bench.log", "bench.json", "train.log", "dva.safetensors", "dva.json", "eval.json"}


def run(*args, env=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    tracked = {p: p.read_bytes() for p in (ROOT / "bench" / "results").glob("*.json")}
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    carried = tmp_path_factory.mktemp("carried") / "recovery"  # as a recovery source carried in from here
    subprocess.run([sys.executable, "-m", "dva.collect", "--policy", "expert", "--episodes", "4", "--max-steps", "12",
                    "--seed", "860000", "--quiet", "--out", str(carried)], cwd=ROOT, check=True, timeout=120)
    p = run("--out", out, "--work", work, "--dry-run", "--data", f"recovery={carried}",
            "--mix", "0:random=0.05,goal=0.05,approach=0.15,expert=0.5,recovery=0.25")
    assert p.returncode == 0, f"dry run failed (rc {p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    # the bench stage ran on a copy: the repo's results files are untouched
    assert {p: p.read_bytes() for p in (ROOT / "bench" / "results").glob("*.json")} == tracked
    return out, p.stdout


def test_dry_run_writes_what_the_device_tool_brings_back(dry):
    out, stdout = dry
    names = {f.name for f in out.iterdir()}
    assert names == FILES, f"missing {FILES - names}, unexpected {names - FILES}"
    for f in out.iterdir():  # the device tool returns at most 8 files of 16 MiB, plainly named
        assert f.is_file() and 0 < f.stat().st_size <= 16 * 2**20 and re.fullmatch(r"[A-Za-z0-9._-]+", f.name), f
    assert re.search(r"\[gpu_run \d\d:\d\d:\d\d \+\s*\d+s\] == train: ok", stdout)


def test_dry_run_env_report(dry):
    rep = json.loads((dry[0] / "env.json").read_text())
    env = rep["env"]
    assert env["torch"] == torch.__version__
    assert env["numpy"] and env["python"] and env["gym_pusht"] == "0.1.8"
    assert set(env["dvakern"]) >= {"backend", "triton", "cuda", "interpreter"}
    assert rep["dry_run"] is True and rep["refusal"] == []
    if not torch.cuda.is_available():  # reported, not refused
        assert any("Triton backend is not active" in w for w in rep["refusal_would_be"])
    st = rep["stages"]
    assert all(st[s]["ok"] for s in ("check", "bench", "train")), st
    assert st["check"]["failures"] == 0 and st["check"]["errors"] == 0 and st["check"]["tests"] >= 1
    assert "-k cuda" in (dry[0] / "check.log").read_text()


def test_dry_run_bench_results(dry):
    doc = json.loads((dry[0] / "bench.json").read_text())
    assert doc["benchmarks"], doc
    assert all(b["median_s"] > 0 for b in doc["benchmarks"].values())


def test_dry_run_trains_exports_and_evaluates(dry):
    out = dry[0]
    model, idm, meta = ckpt.load(out / "dva")  # loadable: shapes and config validated
    assert model is not None and idm is not None
    assert meta["config"]["name"] == "tiny" and meta["config"]["warp_anchor"] is True  # EXPORT_ARGS applied
    assert meta["exported_from"]["dtype"] == "float16"
    ev = json.loads((out / "eval.json").read_text())
    assert 0.0 <= ev["score"] <= 1.0
    assert ev["policy"] == "dva" and ev["n_episodes"] == 2
    assert all(e["seed"] >= 500000 for e in ev["episodes"])  # development seeds, never the protocol's
    log = (out / "train.log").read_text()
    for what in ("dva.collect --policy expert", "dva.train", "==== log.jsonl ====", "dva.checkpoint export",
                 "expert=0.5,recovery=0.25", "--data recovery="):  # the carried source reaches dva.train,
        assert what in log  # which refuses a --mix naming a source it was not given


def test_refuses_the_triton_interpreter(tmp_path):
    p = run("--out", tmp_path / "out", "--work", tmp_path / "work", "--stage", "check",
            env={"TRITON_INTERPRET": "1"}, timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr
    rep = json.loads((tmp_path / "out" / "env.json").read_text())
    assert any("TRITON_INTERPRET" in w for w in rep["refusal"])
    assert rep["stages"] == {} and not (tmp_path / "out" / "check.log").exists()


@pytest.mark.parametrize("args,msg", [
    (["--stage", "chek"], "unknown stage(s) ['chek']"),
    (["--minutes", "0"], "must be positive"),
    (["--init", "/nonexistent/ckpt"], "no such checkpoint"),
    (["--data", "recovery"], "give NAME=PATH"),
    (["--data", "expert=data/expert"], "the name is taken"),
    (["--data", "recovery=/nonexistent", "--mix", "0:recovery=1"], "not a dva.collect dataset"),
])
def test_bad_input_is_named(tmp_path, args, msg):
    p = run("--out", tmp_path / "out", *args, timeout=60)
    assert p.returncode == 2 and msg in p.stderr, p.stderr


def test_unwritable_out_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = run("--out", blocker / "out", "--dry-run", timeout=60)
    assert p.returncode == 2 and "not a writable folder" in p.stderr, p.stderr
