"""The pixel-BC peer (dva.bc): its samples, its augmentation, exact resume, and the policy in the
real gym-pusht env through dva.eval."""
import numpy as np
import pytest
import torch

from dva import eval as dva_eval
from dva.bc import ACTION_SCALE, BCData, BCNet, BCPolicy, main, random_shift
from dva.checkpoint import read
from dva.data.store import load_dataset
from dva.pusht.render import render_frames
from test_data_store import make_dataset

SMALL = ["--width", "8", "--hidden", "16", "--chunk", "4", "--batch", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bc") / "expert"
    make_dataset(root, [5, 3, 6], shard_size=2)
    return root


def test_samples_pair_each_frame_with_its_predecessor_and_next_actions(data):
    ds, d = load_dataset(data, frames=False), BCData(data, chunk=4, progress=False)
    assert len(d) == 5 + 3 + 6  # every frame that has an action after it
    i = 5  # episode 1, t = 0: its own predecessor (as at reset), then t = 1
    assert d.cur[i] == d.prev[i] == ds.state_start[1] and d.prev[i + 1] == d.cur[i]
    acts = ds.episode_arrays(1)["actions"]  # 3 actions: the chunk repeats the last past the end
    want = np.stack([acts[1], acts[2], acts[2], acts[2]]) / ACTION_SCALE - 1
    assert torch.allclose(d.actions[i + 1], torch.from_numpy(want).float())
    x, y = d.batch(torch.tensor([i + 1]))
    frames = render_frames(torch.from_numpy(ds.states[[ds.state_start[1], ds.state_start[1] + 1]]))
    assert x.shape == (1, 6, 96, 96) and y.shape == (1, 4, 2)
    assert torch.equal(x[0, 3:], frames[1].permute(2, 0, 1).float() / 255 - 0.5)  # current frame last


def test_sources_are_drawn_by_weight_and_keep_their_own_frames(data, tmp_path, capsys):
    """BCData over (dir, weight) pairs (python -m dva.bc --data A:W B:W): indices stay inside each
    source's frames and episodes, and a batch's sources follow the weights."""
    other = tmp_path / "recovery"
    make_dataset(other, [4, 2], seed0=50)
    d = BCData([(data, 1.0), (other, 3.0)], chunk=4, progress=False)
    assert d.sizes == [14, 6] and len(d) == 20
    ds2 = load_dataset(other, frames=False)
    j = 14 + 4  # the other source's second episode, t = 0: its own predecessor, its own frame
    assert d.cur[j] == d.prev[j] == len(load_dataset(data, frames=False).states) + ds2.state_start[1]
    x, _ = d.batch(torch.tensor([j]))
    want = render_frames(torch.from_numpy(ds2.states[[ds2.state_start[1]]]))[0]
    assert torch.equal(x[0, 3:], want.permute(2, 0, 1).float() / 255 - 0.5)
    idx = d.sample(4000, torch.Generator().manual_seed(0))
    assert 0 <= idx.min() and idx.max() < 20
    assert abs((idx >= 14).float().mean().item() - 0.75) < 0.03  # weight 3 of 4
    assert main(["--data", str(data), f"{other}:x", "--out", str(tmp_path / "r"), *SMALL]) == 2
    assert "expected DIR or DIR:WEIGHT" in capsys.readouterr().err
    assert main(["--data", f"{tmp_path / 'nope'}:2", "--out", str(tmp_path / "r"), *SMALL]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--data", str(data), f"{other}:3", "--steps", "2", "--out", str(tmp_path / "r"), *SMALL]) == 0
    assert read(tmp_path / "r" / "bc")[1]["data"] == [f"{data}:1", f"{other}:3"]


def test_random_shift_translates_every_channel_together():
    x = torch.randn(3, 6, 10, 12)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2,) * 4, mode="replicate")
    for b in range(3):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(out[b], padded[b, :, dy:dy + 10, dx:dx + 12])]
        assert hits, f"sample {b} is not a shifted copy of its input"
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


def test_ctrl_c_saves_and_the_same_command_continues_exactly(data, tmp_path, monkeypatch):
    cmd = ["--data", str(data), "--steps", "4", *SMALL]
    assert main([*cmd, "--out", str(tmp_path / "a")]) == 0
    forward, calls = BCNet.forward, []

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(BCNet, "forward", interrupted)
    assert main([*cmd, "--out", str(tmp_path / "b")]) == 0  # Ctrl-C during step 3: saved at step 2
    assert read(tmp_path / "b" / "bc")[1]["step"] == 2
    monkeypatch.setattr(BCNet, "forward", forward)
    assert main([*cmd, "--out", str(tmp_path / "b")]) == 0
    (ta, a), (tb, b) = (read(tmp_path / r / "bc") for r in "ab")
    assert b["step"] == 4 and [r["l1_px"] for r in a["log"]] == [r["l1_px"] for r in b["log"]]
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k}: the resumed run differs from the straight one"


def test_resume_refuses_another_schedule_or_other_data(data, tmp_path, capsys):
    cmd = ["--data", str(data), "--steps", "4", *SMALL, "--out", str(tmp_path / "r")]
    assert main([*cmd[:3], "2", *cmd[4:]]) == 0  # a 2-step run, then resumed as a 4-step one: another schedule
    assert read(tmp_path / "r" / "bc")[1]["run"]["steps"] == 2
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "r" / "bc") in err and "--steps 2" in err
    other = tmp_path / "other"
    make_dataset(other, [5, 3, 6], shard_size=2, seed0=7)  # same shape, other episodes
    assert main(["--data", str(other), *cmd[2:3], "2", *cmd[4:]]) == 2
    assert "--data contents" in capsys.readouterr().err
    copy = tmp_path / "copy"  # the same episodes written again elsewhere: the same data
    make_dataset(copy, [5, 3, 6], shard_size=2)
    assert main(["--data", str(copy), *cmd[2:3], "2", *cmd[4:]]) == 0


def test_init_starts_a_new_run_from_another_runs_weights(data, tmp_path):
    assert main(["--data", str(data), "--steps", "3", *SMALL, "--out", str(tmp_path / "a")]) == 0
    # the flags name another model size: --init's config wins, its weights are the start
    assert main(["--data", str(data), "--steps", "1", "--lr", "0", "--width", "4", "--init", str(tmp_path / "a" / "bc"),
                 "--out", str(tmp_path / "b")]) == 0
    (ta, a), (tb, b) = (read(tmp_path / r / "bc") for r in "ab")
    assert b["step"] == 1 and b["config"] == a["config"] and b["init"] == str(tmp_path / "a" / "bc")
    for k in ta:
        if k.startswith("model."):  # lr 0: one step changes nothing, so the run started from a's weights
            assert torch.equal(ta[k], tb[k]), k
    assert main(["--data", str(data), "--steps", "1", "--init", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2


def test_policy_runs_in_the_real_env_through_eval(data, tmp_path, capsys):
    assert main(["--data", str(data), "--out", str(tmp_path), "--steps", "2", *SMALL]) == 0
    threads = torch.get_num_threads()
    try:  # one torch thread per eval worker (2 workers x 2 threads on 2 cores: 50 seeds took >20x longer)
        pol = BCPolicy(tmp_path / "bc", execute=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    calls = []
    pol.net.register_forward_hook(lambda *a: calls.append(1))
    from dva.pusht.protocol import run_episode

    res = run_episode(pol, 100, max_steps=7)
    assert res.steps == 7 and len(calls) == 4  # looks at steps 0, 2, 4, 6
    out = tmp_path / "eval.json"
    assert dva_eval.main(["--policy", "bc", "--checkpoint", str(tmp_path / "bc"), "--seeds", "100,101",
                          "--max-steps", "5", "--quiet", "--out", str(out)]) == 0
    assert "bc: score" in capsys.readouterr().out and out.is_file()


def test_bad_inputs_name_the_file(tmp_path, capsys):
    assert dva_eval.main(["--policy", "bc", "--seeds", "100", "--quiet"]) == 2
    assert "--policy bc needs --checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bc.json"
    bad.write_bytes(b"not a checkpoint")
    (tmp_path / "bc.safetensors").write_bytes(b"nor this")
    with pytest.raises(ValueError, match=str(bad)):
        BCPolicy(bad)
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "missing" in capsys.readouterr().err
