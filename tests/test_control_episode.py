"""Closed-loop control on the real gym-pusht env with the real `tiny` model (random weights,
saved and loaded through dva.checkpoint): lockstep, real time, videos, the CLI and its errors."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from dva import checkpoint
from dva.loop import make_env, run_lockstep, run_realtime
from dva.leapfrog import LeapfrogConfig
from dva.model.config import preset
from dva.model.dva import DVA
from dva.model.idm import IDM
from dva.policy import DVAPlanner, DVAPolicy, LockstepConfig, PlannerConfig, load_planner
from dva.video import HEIGHT, WIDTH, ControlVideo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the CLI does (dva.control --threads 1): on the shared 2-core CPU, 2 torch threads made
    batch-1 inference many times slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A real checkpoint of a randomly initialised tiny model (output layers un-zeroed so the
    dream depends on its inputs, as after training)."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    model, idm = DVA(cfg), IDM(cfg)
    with torch.no_grad():
        for p in list(model.parameters()) + list(idm.parameters()):
            if not p.any():
                p.normal_(0.0, 0.05)
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"idm.{k}": v for k, v in idm.state_dict().items()}}
    st, _ = checkpoint.save(tmp_path_factory.mktemp("ckpt") / "tiny", tensors, {"config": cfg.to_dict()})
    return st


@pytest.fixture(scope="module")
def env():
    return make_env()


def test_lockstep_real_episode_is_deterministic(tiny_ckpt, env):
    planner, _ = load_planner(tiny_ckpt, "cpu")
    policy = DVAPolicy(planner, LockstepConfig(delay=1, replan=1))
    rec, acts = run_lockstep(env, policy, seed=100000, max_steps=20)
    rec2, acts2 = run_lockstep(env, policy, seed=100000, max_steps=20)
    assert rec["steps"] == 20 and acts.shape == (20, 2)
    np.testing.assert_array_equal(acts, acts2)  # same seed -> same actions
    assert rec["max_coverage"] == rec2["max_coverage"]
    assert np.all((acts >= 0) & (acts <= 512))
    # one plan launched per step, each taking over one step later (the last one would at step 20)
    assert rec["deadline_misses"] == 0 and rec["plans"] == 19
    assert rec["latency_ms"]["n"] == 20 and rec["latency_ms"]["p99"] >= rec["latency_ms"]["p50"] > 0
    assert 0.0 <= rec["score"] <= 1.0 and rec["success"] == (rec["max_coverage"] > 0.95)
    _, acts3 = run_lockstep(env, policy, seed=100001, max_steps=5)
    assert not np.array_equal(acts[:5], acts3)
    # delay 0: each plan acts in its own frame's step, landing latency_ms into it; reproducible,
    # and another trajectory than the same plans landing at once
    assert policy.latency_ms == 0.0  # delay 1: the latency is hidden in the step before
    now = DVAPolicy(planner, LockstepConfig(delay=0, latency_ms=35))
    late, acts4 = run_lockstep(env, now, seed=100000, max_steps=20)
    _, acts5 = run_lockstep(env, now, seed=100000, max_steps=20)
    np.testing.assert_array_equal(acts4, acts5)
    assert late["plans"] == 20 and late["lands_ms_into_step"] == 35
    _, acts6 = run_lockstep(env, DVAPolicy(planner, LockstepConfig(delay=0, latency_ms=0)), seed=100000, max_steps=20)
    np.testing.assert_array_equal(acts6[0], acts4[0])  # the same first plan
    assert not np.array_equal(acts4, acts6)
    with pytest.raises(ValueError, match="latency_ms"):
        LockstepConfig(latency_ms=100)


def test_video_is_written_and_decodes(tiny_ckpt, env, tmp_path):
    planner, _ = load_planner(tiny_ckpt, "cpu", PlannerConfig(sample_steps=1))
    policy = DVAPolicy(planner, LockstepConfig(delay=1, replan=2, margin=1))
    with ControlVideo(tmp_path / "ep.mp4", title="test") as video:
        rec, _ = run_lockstep(env, policy, seed=100002, max_steps=6, video=video)
    assert video.path.exists() and video.frames_written == 6
    assert not list(tmp_path.glob(".*partial*")), "the temporary file must be gone"
    with imageio.get_reader(video.path) as reader:  # closed: no leaked ffmpeg pipes
        frames = [f for f in reader]  # (list() asks the reader for an unknown length)
    assert len(frames) == 6 and frames[0].shape == (HEIGHT, WIDTH, 3)
    # the left panel is the real observation, upscaled 4x (lossy codec: compare loosely)
    obs = env.reset(100002)[0]["pixels"]
    left = frames[0][32:32 + 384, :384].reshape(96, 4, 96, 4, 3).mean(axis=(1, 3))
    assert np.abs(left - obs).mean() < 8.0


class SlowModel:
    """Timing harness, not the product: the real tiny DVA, made deliberately slow. Each predicted
    frame takes `per_frame_s` (a sleep pads the real compute), so latency spans several control
    periods and hardly depends on how loaded the shared CPU is."""

    def __init__(self, model, per_frame_s):
        self.model, self.per_frame_s = model, per_frame_s

    def __getattr__(self, name):
        return getattr(self.model, name)

    def dream(self, *args, **kwargs):  # the planner's one call per predicted frame
        t0 = time.perf_counter()
        out = self.model.dream(*args, **kwargs)
        time.sleep(max(0.0, self.per_frame_s - (time.perf_counter() - t0)))
        return out


class RecordingPlanner(DVAPlanner):
    def reset(self, seed):
        super().reset(seed)
        self.plans = []

    def plan(self, start, committed, horizon, executed=None, early=None):
        p = super().plan(start, committed, horizon, executed, early)
        self.plans.append(p)
        return p


def test_realtime_leapfrog_with_slow_model_never_starves(tiny_ckpt, env):
    base, _ = load_planner(tiny_ckpt, "cpu", PlannerConfig(sample_steps=1))
    planner = RecordingPlanner(SlowModel(base.model, 0.3), base.idm, "cpu", base.cfg)
    # 0.3 s per predicted frame against a 1 s period (as 30 ms would be at 10 Hz): plans need
    # >= 6 frames and land >= 2 steps after their frame. The slow period leaves room for the
    # rest of the work (observing real frames, the IDM), which on the shared 2-core CPU under
    # load (load average ~9 measured) took up to 2 s more than usual per plan; 3 steps of
    # margin absorb that.
    cfg = LeapfrogConfig(dt=1.0, margin=3, h_init=4, h_max=16)
    rec, acts = run_realtime(env, planner, cfg, seed=100003, max_steps=12)
    summary = {k: rec[k] for k in ("deadline_misses", "stale_plans", "plans", "latency_ms", "horizon")}
    assert rec["steps"] == 12
    assert rec["deadline_misses"] == 0 and rec["stale_plans"] == 0, summary
    assert rec["plans"] >= 3, summary
    assert rec["latency_ms"]["p50"] > 1000.0, summary  # the harness really is slower than one period...
    # ...and the horizon grew past h_init to cover it: the next plan, launched when this one is
    # done, must land its actions 3 steps (the margin) before this one runs out
    assert rec["horizon"]["max"] >= 5, summary
    # plans join continuously: every plan starts from exactly the actions that were executed
    committed_total = 0
    for p in planner.plans[1:]:
        n = min(p.committed, 12 - p.start)
        np.testing.assert_array_equal(p.actions[:n], acts[p.start:p.start + n])
        committed_total += n
    assert committed_total > 0
    assert 0.95 < 1.0 / rec["control_hz"] < 1.05  # the env advanced on the 1 s wall clock


def test_realtime_plan_takes_over_within_the_step_it_lands_in(tiny_ckpt, env):
    """Inference faster than a period (2 frames x 0.15 s of a 1 s period): each plan is made from
    the newest frame, commits to nothing and drives that same step from the substep its first
    action lands in (submitted early, before the second frame is dreamed); until then the physics
    tracks the previous target (env.step's hold_substeps)."""
    base, _ = load_planner(tiny_ckpt, "cpu", PlannerConfig(sample_steps=1))
    planner = RecordingPlanner(SlowModel(base.model, 0.15), base.idm, "cpu", base.cfg)
    cfg = LeapfrogConfig(dt=1.0, margin=0, h_init=2, h_min=2, h_max=4)
    rec, acts = run_realtime(env, planner, cfg, seed=100004, max_steps=8)
    assert rec["steps"] == 8 and rec["deadline_misses"] == 0, rec
    late = [p for p in planner.plans[1:]]
    assert [p.start for p in late] == list(range(1, 8)) and all(p.committed == 0 for p in late)
    for p in late:  # the step of its own frame executes its first action
        np.testing.assert_array_equal(acts[p.start], p.actions[0])
    # its first action landed after one dreamed frame, ~0.15 s into each 1 s step (2 of 10 substeps
    # held; step 0's plan was made before the clock: 0), not after the whole 2-frame plan (>= 3)
    assert 1.5 <= rec["hold_substeps_mean"] < 3, rec


def run_cli(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dva.control", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_cli_writes_metrics_and_video(tiny_ckpt, tmp_path):
    r = run_cli("--checkpoint", str(tiny_ckpt), "--max-steps", "4", "--episodes", "2", "--seed", "100005",
                "--sample-steps", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["mode"] == "lockstep" and m["summary"]["episodes"] == 2
    assert [e["seed"] for e in m["episodes"]] == [100005, 100006]
    for e in m["episodes"]:
        assert e["steps"] == 4 and Path(e["video"]).exists()
        assert {"control_hz", "latency_ms", "deadline_misses", "action_jump_px"} <= set(e)
    assert str(tmp_path / "metrics.json") in r.stdout


def test_cli_bad_checkpoint_is_a_clear_error(tiny_ckpt, tmp_path):
    # not a checkpoint at all
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    (tmp_path / "junk.json").write_text("{not json")
    r = run_cli("--checkpoint", str(junk), "--out", str(tmp_path / "o1"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "junk.json" in r.stderr and "not valid JSON" in r.stderr and "python -m dva.train" in r.stderr
    # a config that does not match the weights
    bad = tmp_path / "bad"
    st, js = checkpoint.paths(tiny_ckpt)
    meta = json.loads(js.read_text())
    meta["config"]["d_model"] = 64
    (tmp_path / "bad.safetensors").write_bytes(st.read_bytes())
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    r = run_cli("--checkpoint", str(bad), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "bad.safetensors" in r.stderr and "does not match the model config" in r.stderr
    assert not (tmp_path / "o1" / "metrics.json").exists()


def test_cli_missing_checkpoint_says_how_to_train(tmp_path, capsys):
    from dva.control import main

    assert main(["--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope.safetensors does not exist" in err and "python -m dva.train" in err
    assert main(["--max-steps", "0"]) == 2 and "--max-steps must be >= 1" in capsys.readouterr().err
    assert main(["--latency-ms", "100"]) == 2 and "--latency-ms must be in [0, 100)" in capsys.readouterr().err


def test_protocol_runs_dva_through_the_eval_registry(tiny_ckpt):
    """`python -m dva.eval --policy dva --checkpoint PATH` builds DVAPolicy(checkpoint=...)."""
    from dva.pusht.protocol import evaluate

    from dva.policy import PLAN_LATENCY_MS
    from dva.pusht import protocol

    threads = torch.get_num_threads()
    res = evaluate("dva", seeds=[100000], workers=1, max_steps=3, progress=False,
                   policy_kwargs={"checkpoint": tiny_ckpt, "device": "cpu"})
    # the default: delay 0, landing the measured plan time into the step
    assert protocol._CACHE["policy"].cfg.delay == 0 and res["latency_ms"] == PLAN_LATENCY_MS
    d1 = evaluate("dva", seeds=[100000], workers=1, max_steps=3, progress=False,
                  policy_kwargs={"checkpoint": tiny_ckpt, "device": "cpu", "delay": 1})  # dva.eval --delay 1
    assert protocol._CACHE["policy"].cfg.delay == 1 and d1["latency_ms"] == 0.0
    d0 = evaluate("dva", seeds=[100000], workers=1, max_steps=3, progress=False, latency_ms=12.5,
                  policy_kwargs={"checkpoint": tiny_ckpt, "device": "cpu"})  # dva.eval --latency-ms 12.5
    torch.set_num_threads(threads)
    assert d0["latency_ms"] == 12.5 and d0["episodes_detail"][0]["latency_ms"] == 12.5
    assert res["gym_pusht_version"] == "0.1.8" and 0.0 <= res["score"] <= 1.0
    assert len(res["episodes_detail"]) == 1


def test_eval_cli_takes_a_checkpoint_stem(tiny_ckpt, tmp_path, capsys):
    """`python -m dva.eval --policy dva --checkpoint STEM` accepts a stem like every other CLI
    and names the missing file otherwise."""
    import json

    from dva.eval import main

    threads = torch.get_num_threads()
    stem = str(tiny_ckpt).removesuffix(".safetensors")
    out = tmp_path / "e.json"
    assert main(["--policy", "dva", "--checkpoint", stem, "--device", "cpu", "--seeds", "100000", "--max-steps", "2",
                 "--workers", "1", "--quiet", "--out", str(out)]) == 0
    torch.set_num_threads(threads)
    assert json.loads(out.read_text())["episodes"][0]["steps"] == 2
    assert main(["--policy", "dva", "--checkpoint", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["--policy", "dva", "--delay", "-1", "--quiet"]) == 2 and "--delay" in capsys.readouterr().err


def test_openloop_scores_plans_against_the_expert(tiny_ckpt, tmp_path, capsys):
    """dva.openloop on real expert episodes: a JSON row per free horizon step with the plan and the
    three baselines; the 'stay' baseline is recomputed here from the dataset by hand."""
    from dva.collect import main as collect
    from dva.data.store import load_dataset
    from dva.openloop import baselines
    from dva.openloop import main as openloop

    data = tmp_path / "expert_dev"
    assert collect(["--policy", "expert", "--episodes", "2", "--seed", "600000", "--max-steps", "24",
                    "--out", str(data)]) == 0
    out = tmp_path / "ol.json"
    assert openloop(["--checkpoint", str(tiny_ckpt), "--data", str(data), "--horizon", "3", "--committed", "1",
                     "--every", "4", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    d = json.loads(out.read_text())
    assert [r["step"] for r in d["per_step"]] == [1, 2]
    ds = load_dataset(data, frames=False)
    stay = []
    for e in range(len(ds.steps)):
        a = ds.episode_arrays(e)
        for t in range(0, len(a["actions"]) - 3 + 1, 4):
            stay.append(np.linalg.norm(a["actions"][t + 1] - a["states"][t, :2]))
    assert d["samples"] == len(stay)
    assert d["stay_px"] == pytest.approx(np.mean(stay)) and d["per_step"][0]["stay"]["n"] == len(stay)
    assert d["first_free_px"] == d["per_step"][0]["plan"]["px_mean"] > 0 and d["idm_real_px"] > 0
    assert "first free action" in capsys.readouterr().out
    # at t = 2 with 1 committed action the planner knows actions 0..2: step 3 continues 2 -> 3
    b = baselines(np.array([[10.0, 10, 0, 0, 0]] * 5), np.array([[0.0, 0], [4, 2], [6, 3], [0, 0]]), 2, 2, 3)
    assert b["stay"].tolist() == [[10, 10], [10, 10]] and b["last"].tolist() == [[6, 3], [6, 3]]
    assert b["constvel"][1].tolist() == [8, 4]
    assert len(d["first_free_px_per_plan"]) == d["samples"]
    # the pixel-BC peer on the same plans: its chunk from frames (t-1, t), action t+1 scored
    from dva.bc import BCPolicy
    from dva.bc import main as bc_train
    from dva.pusht.render import render_frames

    assert bc_train(["--data", str(data), "--out", str(tmp_path / "bc"), "--steps", "2", "--width", "8",
                     "--hidden", "16", "--batch", "4"]) == 0
    assert openloop(["--checkpoint", str(tiny_ckpt), "--data", str(data), "--horizon", "3", "--every", "4",
                     "--device", "cpu", "--bc", str(tmp_path / "bc" / "bc"), "--out", str(out), "--quiet"]) == 0
    d = json.loads(out.read_text())
    a = ds.episode_arrays(0)
    f0 = render_frames(torch.from_numpy(a["states"][:1])).numpy()[0]
    first = np.linalg.norm(BCPolicy(tmp_path / "bc" / "bc").predict(f0, f0)[1] - a["actions"][1])
    assert d["bc_px_per_plan"][0] == pytest.approx(first, abs=1e-3) and len(d["bc_px_per_plan"]) == d["samples"]
    assert d["per_step"][0]["bc"]["px_mean"] == d["bc_px"]
    assert openloop(["--checkpoint", str(tiny_ckpt), "--data", str(data), "--horizon", "2", "--committed", "2"]) == 2
    assert openloop(["--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_probe_reads_the_action_off_the_context(tiny_ckpt, tmp_path, capsys):
    """dva.probe on real expert episodes: ridge probes of the context and the tokens, and the
    constant-velocity floor recomputed here by hand; the ridge itself recovers a linear map."""
    from dva.collect import main as collect
    from dva.data.store import load_dataset
    from dva.probe import main as probe
    from dva.probe import ridge

    X = np.random.default_rng(0).normal(size=(400, 6))
    y = X @ np.array([[1.0, -2], [0.5, 0], [0, 3], [1, 1], [-1, 0], [2, 2]]) + 7
    pred, lam = ridge(X[:300], y[:300], X[300:], lambdas=(1e-6,))
    assert np.abs(pred - y[300:]).max() < 1e-3 and lam == 1e-6

    data = tmp_path / "expert"
    assert collect(["--policy", "expert", "--episodes", "3", "--seed", "600000", "--max-steps", "20",
                    "--out", str(data)]) == 0
    out = tmp_path / "probe.json"
    assert probe(["--checkpoint", str(tiny_ckpt), "--train", str(data), "--test", str(data), "--min-history", "2",
                  "--out", str(out), "--quiet"]) == 0
    d = json.loads(out.read_text())
    ds, W = load_dataset(data, frames=False), 4  # the tiny preset's ring window
    cv = []
    for e in range(len(ds.steps)):
        a = ds.episode_arrays(e)["actions"]
        for s in range(0, len(a) - W + 1, W):
            cv += [np.linalg.norm(np.clip(2 * a[t - 1] - a[t - 2], 0, 512) - a[t]) for t in range(s + 2, s + W)]
    assert d["test_samples"] == len(cv) and d["constvel"]["px_mean"] == pytest.approx(np.mean(cv))
    assert d["context"]["dims"] == d["tokens"]["dims"] == 4 * 32 and d["context"]["px_mean"] > 0
    assert "context:" in capsys.readouterr().out
    assert probe(["--checkpoint", str(tiny_ckpt), "--train", str(tmp_path / "nope"), "--test", str(data)]) == 2
