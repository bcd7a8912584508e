"""SequenceLoader: episode boundaries, alignment, split, mixture proportions, determinism."""
import numpy as np
import pytest
import torch

from dva.data.loader import MixtureSchedule, SequenceLoader, is_val_episode
from dva.data.store import DatasetError, load_dataset
from dva.pusht import render_frames
from test_data_store import make_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root / "random", [6, 9, 4, 12], shard_size=2, seed0=0)
    make_dataset(root / "goal", [8, 8], shard_size=2, seed0=100)
    make_dataset(root / "expert", [10, 5, 7], shard_size=3, seed0=200)
    return {k: str(root / k) for k in ("random", "goal", "expert")}


def test_sequences_stay_inside_episodes_and_align(datasets):
    L = 4
    loader = SequenceLoader(datasets, seq_len=L, batch_size=24, val_fraction=0.0, seed=1)
    dss = {k: load_dataset(v) for k, v in datasets.items()}
    for step in range(3):
        b = loader.sample(step)
        assert b["frames"].shape == (24, L, 96, 96, 3) and b["frames"].dtype == torch.uint8
        assert b["actions"].shape == (24, L, 2) and b["actions"].dtype == torch.float32
        assert b["states"].shape == (24, L, 5) and b["agent_vel"].shape == (24, L, 2)
        for i in range(24):
            ds = dss[b["source"][i]]
            # locate the sequence: first state row equal to the batch's first state
            s0 = b["states"][i, 0].double().numpy()
            rows = np.nonzero(np.abs(ds.states - s0).max(1) < 1e-3)[0]
            ok = False
            for r in rows:
                e = np.searchsorted(ds.state_start, r, side="right") - 1
                t = r - ds.state_start[e]
                if t + L > ds.steps[e]:  # would need an action past the episode end
                    continue
                ep = ds.episode_arrays(e)
                if np.allclose(ep["states"][t:t + L], b["states"][i].numpy(), atol=1e-3) and \
                        np.allclose(ep["actions"][t:t + L], b["actions"][i].numpy(), atol=1e-3):
                    ok = True
            assert ok, f"batch row {i} is not L consecutive steps of one episode with its actions"
        # frames are the renderer's frames of the states
        assert torch.equal(b["frames"][:2].reshape(-1, 96, 96, 3),
                           render_frames(b["states"][:2].reshape(-1, 5).double()))


def test_short_episodes_are_never_sampled(datasets):
    loader = SequenceLoader({"random": datasets["random"]}, seq_len=7, batch_size=256, val_fraction=0.0)
    ds = load_dataset(datasets["random"])
    b = loader.sample(0, frames=False)
    assert b["frames"] is None
    # episodes with 6 and 4 steps cannot hold 7 frames + 7 actions
    short = np.concatenate([ds.episode_arrays(i)["states"] for i in (0, 2)])
    for s in b["states"][:, 0].double().numpy():
        assert np.abs(short - s).max(1).min() > 1e-6
    with pytest.raises(DatasetError, match="no train sequences of length 20"):
        SequenceLoader({"random": datasets["random"]}, seq_len=20, batch_size=2, val_fraction=0.0)


def test_mixture_proportions_follow_schedule(datasets):
    sched = MixtureSchedule(((0, {"random": 0.7, "goal": 0.15, "expert": 0.15}),
                             (10, {"random": 0.0, "goal": 0.2, "expert": 0.8})))
    loader = SequenceLoader(datasets, seq_len=2, batch_size=500, schedule=sched, val_fraction=0.0)
    for step, want in ((0, {"random": 0.7, "goal": 0.15, "expert": 0.15}),
                       (10, {"random": 0.0, "goal": 0.2, "expert": 0.8})):
        names = sum((loader.sample(step + k, frames=False)["source"] for k in range(4)), [])
        for k, p in want.items():
            frac = names.count(k) / len(names)
            assert abs(frac - p) < 0.04, (step, k, frac, p)
    assert sched.weights(9)["random"] == pytest.approx(0.7) and sched.weights(10)["random"] == 0.0
    st = MixtureSchedule.staged(1000)
    assert st.weights(0)["random"] == pytest.approx(0.7) and st.weights(999)["expert"] == pytest.approx(0.95)


def test_sampling_is_deterministic_per_step(datasets):
    a = SequenceLoader(datasets, seq_len=3, batch_size=8, seed=5, val_fraction=0.0)
    b = SequenceLoader(datasets, seq_len=3, batch_size=8, seed=5, val_fraction=0.0)
    b.sample(7)  # call order must not matter
    x, y = a.sample(3), b.sample(3)
    assert torch.equal(x["states"], y["states"]) and x["source"] == y["source"]
    assert not torch.equal(a.sample(4)["states"], x["states"])


def test_val_split_is_disjoint_and_deterministic(datasets):
    picks = [is_val_episode("random", e, 0.5) for e in range(200)]
    assert picks == [is_val_episode("random", e, 0.5) for e in range(200)]
    assert 60 < sum(picks) < 140
    train = SequenceLoader({"random": datasets["random"]}, 2, 4, val_fraction=0.5, split="train")
    val = SequenceLoader({"random": datasets["random"]}, 2, 4, val_fraction=0.5, split="val")
    tr = set(train.sources["random"].state_start.tolist())
    va = set(val.sources["random"].state_start.tolist())
    assert tr and va and not (tr & va)


def test_bad_arguments(datasets, tmp_path):
    with pytest.raises(ValueError, match=r"schedule names sources \['expert'\]"):
        SequenceLoader({"random": datasets["random"]}, 2, 2,
                       schedule=MixtureSchedule.constant({"random": 1, "expert": 1}))
    with pytest.raises(DatasetError, match="does not exist"):
        SequenceLoader({"random": str(tmp_path / "nope")}, 2, 2)
    with pytest.raises(ValueError, match="split"):
        SequenceLoader(datasets, 2, 2, split="test")
