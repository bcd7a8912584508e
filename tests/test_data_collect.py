"""python -m dva.collect: determinism, resume after an interrupt, config mismatch."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dva.collect import CollectConfig, collect, main, plan_shards
from dva.data.store import Manifest, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def _same(a, b):
    for k in ("seed", "steps"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    for k in ("states", "agent_vel", "actions", "coverage"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k


def test_collection_is_deterministic_across_workers(tmp_path):
    cfg = CollectConfig(policy="random", seed=3, max_steps=15, shard_size=2)
    collect(cfg, tmp_path / "a", 5, workers=1, progress=False)
    collect(cfg, tmp_path / "b", 5, workers=2, progress=False)
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    _same(a, b)
    assert a.seed.tolist() == [3, 4, 5, 6, 7] and len(a.manifest.shards) == 3


def test_resume_after_interrupt(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "dva.collect", "--policy", "random", "--episodes", "12",
           "--max-steps", "60", "--shard-size", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # interrupt once a few shards are in the manifest
        if (out / "manifest.json").exists() and Manifest.load(out).episodes >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the harshest interrupt: no cleanup at all
    proc.wait()
    part = Manifest.load(out)
    assert 2 <= part.episodes < 12, "interrupt came too late to test resuming"
    load_dataset(out)  # what is there is complete and valid
    assert main(cmd[3:]) == 0  # same command resumes
    full = load_dataset(out)
    assert full.manifest.episodes == 12 and full.seed.tolist() == list(range(12))
    ref = tmp_path / "ref"
    assert main(cmd[3:-3] + ["--out", str(ref), "--quiet"]) == 0
    _same(full, load_dataset(ref))
    leftovers = [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert len(leftovers) <= 1  # at most the temp file of the shard that was being written


def test_resume_repairs_a_truncated_or_missing_shard(tmp_path, capsys):
    cmd = ["--policy", "random", "--episodes", "6", "--max-steps", "10", "--shard-size", "2",
           "--out", str(tmp_path), "--quiet"]
    assert main(cmd) == 0
    good = load_dataset(tmp_path)
    shards = sorted(tmp_path.glob("shard_*.npz"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # truncated in place
    shards[2].unlink()  # gone
    capsys.readouterr()
    assert main(cmd) == 0
    err = capsys.readouterr().err
    assert f"{shards[1]}: truncated" in err and f"{shards[2]}: shard listed in the manifest is missing" in err
    _same(load_dataset(tmp_path), good)  # re-collected, identical
    assert (tmp_path / (shards[1].name + ".bad")).read_bytes() == data[: len(data) // 2]
    assert main(cmd) == 0 and capsys.readouterr().err == ""  # a sound dataset is left alone


def test_extend_and_config_mismatch(tmp_path, capsys):
    base = ["--policy", "random", "--max-steps", "10", "--shard-size", "3", "--out", str(tmp_path), "--quiet"]
    assert main(base + ["--episodes", "4"]) == 0
    assert main(base + ["--episodes", "7"]) == 0
    ds = load_dataset(tmp_path)
    assert ds.seed.tolist() == list(range(7))
    assert [(s["first_episode"], s["episodes"]) for s in ds.manifest.shards] == [(0, 3), (3, 1), (4, 3)]
    assert main(["--policy", "goal", "--max-steps", "10", "--shard-size", "3", "--out", str(tmp_path),
                 "--episodes", "2", "--quiet"]) == 2
    assert "different config (policy: 'random' there, 'goal' now" in capsys.readouterr().err
    # a policy whose code changed since the dataset was started is refused too
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["config"]["code"]["policy_source_files"] == ["policies.py"]
    man["config"]["code"]["policy_source_sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    assert main(base + ["--episodes", "8"]) == 2
    assert "policy's source (dva.pusht.policies) changed" in capsys.readouterr().err


def test_latency_option_collects_under_that_timing_and_is_part_of_the_identity(tmp_path, capsys):
    """--latency-ms: the episodes are what dva.eval --latency-ms runs (the physics holds the
    previous target that long), a resume must use the same latency, and latency 0 leaves the
    identity as it was before the option existed (old manifests still resume)."""
    from dva.pusht.protocol import run_episode
    from dva.pusht.policies import make_policy

    base = ["--policy", "random", "--max-steps", "12", "--episodes", "2", "--seed", "40", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "l32"), "--latency-ms", "32"]) == 0
    ds = load_dataset(tmp_path / "l32")
    _, tr = run_episode(make_policy("random"), 41, max_steps=12, record=True, latency_ms=32)
    assert np.array_equal(ds.episode_arrays(1)["states"], np.stack(tr["states"]))
    assert main(base + ["--out", str(tmp_path / "l32")]) == 2
    assert "latency_ms: 32.0 there, None now" in capsys.readouterr().err
    assert "latency_ms" not in CollectConfig(policy="random").identity()
    assert main(base + ["--out", str(tmp_path / "x"), "--latency-ms", "100"]) == 2


def test_plan_shards_fills_gaps():
    m = Manifest(config={}, shards=[{"first_episode": 2, "episodes": 2}, {"first_episode": 7, "episodes": 1}])
    assert plan_shards(m, 10, 3) == [(0, 2), (4, 3), (8, 2)]


def test_frames_option(tmp_path):
    collect(CollectConfig(policy="goal", max_steps=5, frames=True), tmp_path, 1, progress=False)
    ds = load_dataset(tmp_path)
    assert ds.frames is not None and ds.frames.shape == (ds.n_frames, 96, 96, 3)
    import torch

    from dva.pusht import render_frames

    mine = render_frames(torch.from_numpy(ds.states)).numpy()
    assert (mine != ds.frames).any(-1).mean() < 1e-3


def test_recovery_data_starts_where_the_visited_states_file_says(tmp_path, capsys):
    """eval --states-out writes the states a policy visited; collect --start-states starts episode i
    from row i of it (the state, to pymunk's float round trip, and the disc's velocity), and a changed file is refused
    on resume, an unreadable one named."""
    from dva.eval import main as evaluate

    visited = tmp_path / "visited.npz"
    assert evaluate(["--policy", "random", "--seeds", "700000:700002", "--max-steps", "25", "--states-every", "10",
                     "--states-out", str(visited), "--out", str(tmp_path / "e.json"), "--quiet"]) == 0
    z = np.load(visited)
    assert z["states"].shape == (6, 5) and z["step"].tolist() == [0, 10, 20] * 2
    assert z["seed"].tolist() == [700000] * 3 + [700001] * 3
    assert json.loads((tmp_path / "e.json").read_text())["states_out"]["states"] == 6
    out = tmp_path / "recovery"
    assert main(["--policy", "random", "--start-states", str(visited), "--episodes", "6", "--max-steps", "5",
                 "--out", str(out), "--quiet"]) == 0
    ds = load_dataset(out, frames=False)
    for i in range(6):
        a = ds.episode_arrays(i)
        np.testing.assert_allclose(a["states"][0], z["states"][i], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(a["agent_vel"][0], z["agent_vel"][i])
    capsys.readouterr()
    assert main(["--policy", "random", "--start-states", str(visited), "--episodes", "7", "--out", str(out)]) == 2
    assert "7 > the 6 start states" in capsys.readouterr().err
    np.savez(visited, states=z["states"][::-1], agent_vel=z["agent_vel"][::-1])  # other states, same path
    assert main(["--policy", "random", "--start-states", str(visited), "--episodes", "6", "--max-steps", "5",
                 "--out", str(out), "--quiet"]) == 2
    assert "start_states_sha256" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    assert main(["--policy", "random", "--start-states", str(tmp_path / "bad.npz"), "--episodes", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "bad.npz" in capsys.readouterr().err
