"""Protocol metric math on hand-made coverage traces, evaluate() with workers, the CLI."""
import json

import numpy as np
import pytest

from dva.pusht.protocol import SEEDS, episode_trace_metrics, evaluate, parse_seeds, summarize


def test_protocol_constants():
    assert SEEDS[0] == 100000 and SEEDS[-1] == 100049 and len(SEEDS) == 50


def test_metric_math_on_hand_made_traces():
    traces = [
        [0.1, 0.5, 0.96],        # success at step 3
        [0.2, 0.9, 0.3],         # max 0.9 -> score 0.9/0.95
        [0.95, 0.95],            # exactly 0.95 is NOT a success (strictly greater)
        [0.0, 0.0],              # nothing
    ]
    per = [episode_trace_metrics(t) for t in traces]
    assert [p["success"] for p in per] == [True, False, False, False]
    assert per[0]["success_step"] == 3 and per[1]["success_step"] is None
    m = summarize([p["max_coverage"] for p in per])
    assert m["success"] == pytest.approx(0.25)
    assert m["score"] == pytest.approx((1.0 + 0.9 / 0.95 + 1.0 + 0.0) / 4)
    assert summarize([1.0, 0.99])["score"] == 1.0  # clipped at 1


def test_parse_seeds():
    assert parse_seeds("100000:100003") == [100000, 100001, 100002]
    assert parse_seeds("5,7") == [5, 7]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("a:b")
    with pytest.raises(ValueError, match="selects no seeds"):
        parse_seeds("5:5")


def test_evaluate_workers_agree():
    one = evaluate("goal", [100000, 100001], workers=1, max_steps=40, pixels=False, progress=False)
    two = evaluate("goal", [100000, 100001], workers=2, max_steps=40, pixels=False, progress=False)
    for a, b in zip(one["episodes_detail"], two["episodes_detail"]):
        assert (a["seed"], a["steps"]) == (b["seed"], b["steps"])
        # physics is bit-identical across processes; shapely's coverage area can differ by
        # 1 ulp between processes with different import histories (measured: 2.2e-16)
        assert a["max_coverage"] == pytest.approx(b["max_coverage"], rel=1e-12, abs=1e-12)
    assert one["score"] == pytest.approx(two["score"]) and one["gym_pusht_version"] == "0.1.8"


def test_policy_object_is_evaluated_in_process():
    class Still:
        def reset(self, seed):
            self.seeds = getattr(self, "seeds", []) + [seed]

        def act(self, obs):
            assert obs["pixels"].shape == (96, 96, 3)
            return obs["state"][:2]

    p = Still()
    r = evaluate(p, [100000, 100001], max_steps=5, progress=False)
    assert p.seeds == [100000, 100001] and r["success"] == 0.0
    assert all(e["steps"] == 5 for e in r["episodes_detail"])
    with pytest.raises(ValueError, match="workers"):
        evaluate(p, [1], workers=2)


def test_latency_holds_the_previous_target_within_each_step():
    """evaluate(latency_ms=L): every action lands ceil(L / 10 ms) physics substeps after its frame,
    exactly PushTEnv.step's hold_substeps; act() is timed per episode."""
    from dva.pusht.env import PushTEnv

    class Zigzag:
        def reset(self, seed):
            self.k = 0

        def act(self, obs):
            self.k += 1
            return np.array([100.0, 400.0]) if self.k % 3 else np.array([400.0, 120.0])

    r = evaluate(Zigzag(), [100003], max_steps=12, progress=False, keep_states=True, latency_ms=35)
    env, pol = PushTEnv(pixels=False), Zigzag()
    env.reset(100003), pol.reset(100003)
    want = [env.step(pol.act(None), 4)[0]["state"] for _ in range(12)]
    assert np.array_equal(r["results"][0].states[1:], np.array(want))
    r0 = evaluate(Zigzag(), [100003], max_steps=12, progress=False, keep_states=True)
    assert not np.array_equal(r0["results"][0].states, r["results"][0].states)
    assert r["latency_ms"] == 35 and r0["latency_ms"] == 0  # Zigzag declares no latency: 0
    Zigzag.latency_ms = 35.0  # a policy's own latency is the default
    r1 = evaluate(Zigzag(), [100003], max_steps=12, progress=False, keep_states=True)
    assert np.array_equal(r1["results"][0].states, r["results"][0].states) and r1["latency_ms"] == 35
    assert r["act_ms_p50"] >= 0 and r["episodes_detail"][0]["act_ms"] >= 0
    with pytest.raises(ValueError, match="latency_ms"):
        evaluate("random", [1], latency_ms=120, progress=False)


def test_eval_cli_writes_json(tmp_path, capsys):
    from dva.eval import main

    out = tmp_path / "e.json"
    assert main(["--policy", "random", "--seeds", "100000:100002", "--max-steps", "20",
                 "--out", str(out), "--quiet"]) == 0
    d = json.loads(out.read_text())
    assert {"score", "success", "gym_pusht_version"} <= d.keys()
    assert [e["seed"] for e in d["episodes"]] == [100000, 100001]
    assert all({"seed", "max_coverage", "steps"} <= e.keys() for e in d["episodes"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("random: score") and lines[-1].strip().startswith("behaviour: parked")
    assert main(["--policy", "random", "--seeds", "x", "--quiet"]) == 2


def test_eval_cli_writes_json_by_default(tmp_path, monkeypatch):
    """Without --out the metrics still land on disk: runs/eval_POLICY.json."""
    from dva.eval import main

    monkeypatch.chdir(tmp_path)
    assert main(["--policy", "random", "--seeds", "100000", "--max-steps", "5", "--quiet"]) == 0
    assert json.loads((tmp_path / "runs" / "eval_random.json").read_text())["episodes"][0]["steps"] == 5


def test_episode_behaviour_on_hand_made_states():
    """parked = the disc under 2 px/step for 20+ steps in a row; T against a wall = a T corner
    within 3 px of a wall's inner face; first contact = the first step that moved the T; pose
    error = the T's mean corner distance to the goal."""
    from dva.pusht.protocol import episode_behaviour
    from dva.pusht.sim import GOAL_POSE

    T = 40
    s = np.zeros((T + 1, 5))
    s[:, 0] = np.concatenate([np.arange(11) * 10.0, np.full(T - 10, 100.0)]) + 50  # moves 10 steps, then rests
    s[:, 1] = 100.0
    s[:, 2:5] = GOAL_POSE
    s[25:, 2] += 1.0  # pushed 1 px at step 25
    b = episode_behaviour(s)
    assert b["parked"] and b["parked_max_steps"] == T - 10
    assert b["first_contact_step"] == 25 and not b["t_against_wall"]
    assert b["best_pose_err_px"] == pytest.approx(0.0) and b["final_pose_err_px"] == pytest.approx(1.0)
    s[:, 0] = np.arange(T + 1) * 2.5 + 50  # 2.5 px/step throughout: never parked
    assert not episode_behaviour(s)["parked"]
    s[30:, 2:5] = [60.0, 250.0, 0.0]  # the T's bar spans x 0..120: into the left wall
    b = episode_behaviour(s)
    assert b["t_against_wall"] and b["t_at_wall_steps"] == T + 1 - 30
    s[:, 2:5] = GOAL_POSE
    assert episode_behaviour(s)["first_contact_step"] is None


def test_eval_json_has_the_failure_breakdown_and_dev_seeds(tmp_path, capsys):
    from dva.eval import main
    from dva.pusht.protocol import DEV_SEEDS

    assert not set(DEV_SEEDS) & set(SEEDS)
    out = tmp_path / "e.json"
    assert main(["--policy", "goal", "--seeds", "dev", "--max-steps", "30", "--out", str(out), "--quiet"]) == 0
    d = json.loads(out.read_text())
    assert [e["seed"] for e in d["episodes"]] == list(DEV_SEEDS)
    keys = {"parked", "t_against_wall", "first_contact_step", "final_pose_err_px"}
    assert all(keys <= e.keys() for e in d["episodes"])
    assert 0 <= d["behaviour"]["parked"] <= 1 and d["behaviour"]["mean_final_pose_err_px"] > 0
    assert "behaviour: parked" in capsys.readouterr().out


def test_paired_difference_and_its_standard_error(tmp_path, capsys):
    from dva.paired import main

    def ev(scores, success=None, first_seed=500000):
        success = success or [False] * len(scores)
        return {"episodes": [{"seed": first_seed + i, "score": s, "success": w}
                             for i, (s, w) in enumerate(zip(scores, success))]}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(ev([0.2, 0.4, 0.6, 0.1])))
    b.write_text(json.dumps(ev([0.3, 0.6, 0.6, 0.3])))
    assert main([str(a), str(b)]) == 0
    d = np.array([0.1, 0.2, 0.0, 0.2])
    out = capsys.readouterr().out
    assert f"{d.mean():+.3f} +- {d.std(ddof=1) / 2:.3f}" in out and "NEW beats BASE" in out  # 0.125 >= 2 * 0.048
    # the score flat, success up 4 of 8 seeds (0.5 +- 0.19): ships; the same with the score down 4.0 SE: not
    a.write_text(json.dumps(ev([0.9] * 8, [False] * 8)))
    b.write_text(json.dumps(ev([0.9, 1.0, 0.9, 0.8] * 2, [True, True, False, False] * 2)))
    assert main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "success outcomes: both 0, base only 0, new only 4, neither 4" in out
    assert out.strip().splitlines()[-1] == "ship rule: NEW beats BASE"  # still the last line
    b.write_text(json.dumps(ev([0.85, 0.9, 0.8, 0.8] * 2, [True, True, False, False] * 2)))
    assert main([str(a), str(b)]) == 0 and "does not beat" in capsys.readouterr().out
    b.write_text(json.dumps({"first_free_px_per_plan": [1.0, 2.0]}))
    assert main([str(a), str(b)]) == 2 and "holds" in capsys.readouterr().err
    b.write_text(json.dumps(ev([0.3, 0.6, 0.6])))
    assert main([str(a), str(b)]) == 2 and "same seeds" in capsys.readouterr().err
    # two pairs on disjoint seeds pool into one difference; overlapping seeds are refused by name
    c, d2 = tmp_path / "c.json", tmp_path / "d.json"
    a.write_text(json.dumps(ev([0.2, 0.4])))
    b.write_text(json.dumps(ev([0.3, 0.6])))
    c.write_text(json.dumps(ev([0.6, 0.1], first_seed=600000)))
    d2.write_text(json.dumps(ev([0.6, 0.3], first_seed=600000)))
    assert main([str(a), str(b), str(c), str(d2)]) == 0
    assert f"{d.mean():+.3f} +- {d.std(ddof=1) / 2:.3f} (standard error, n = 4)" in capsys.readouterr().out
    assert main([str(a), str(b), str(a), str(b)]) == 2 and "disjoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(a), str(b), str(c)])
    # each side pooled on its own: two 2-seed reference runs against one 4-seed candidate run
    e = tmp_path / "e.json"
    e.write_text(json.dumps({"episodes": json.loads(b.read_text())["episodes"] + json.loads(d2.read_text())["episodes"]}))
    assert main(["--base", str(a), str(c), "--new", str(e)]) == 0
    assert f"{d.mean():+.3f} +- {d.std(ddof=1) / 2:.3f} (standard error, n = 4)" in capsys.readouterr().out
    assert main(["--base", str(a), "--new", str(e)]) == 2 and "same seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base", str(a), str(c)])
