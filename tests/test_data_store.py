"""Episode store: atomic shards, manifest checksums, and refusal of bad shards."""
import json

import numpy as np
import pytest

from dva.data.store import (DatasetError, Episode, Manifest, load_dataset, read_shard, shard_name,
                            write_shard)
from dva.pusht.env import PushTEnv


def make_episode(seed: int, steps: int, frames: bool = False) -> Episode:
    """A real gym-pusht episode under a random pointer (short, state-only unless frames)."""
    env = PushTEnv(pixels=frames)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed)
    S, V, A, C, F = [obs["state"]], [obs["agent_vel"]], [], [info["coverage"]], [obs.get("pixels")]
    for _ in range(steps):
        a = rng.uniform(50, 460, 2)
        obs, _, _, _, info = env.step(a)
        A.append(a), S.append(obs["state"]), V.append(obs["agent_vel"]), C.append(info["coverage"])
        F.append(obs.get("pixels"))
    return Episode(seed, np.stack(S), np.stack(V), np.stack(A), np.array(C, np.float32),
                   np.stack(F) if frames else None)


def make_dataset(root, steps_per_episode, shard_size=2, frames=False, seed0=0):
    root.mkdir(parents=True, exist_ok=True)
    man = Manifest(config={"policy": "test-random"}, gym_pusht_version="0.1.8")
    eps = [make_episode(seed0 + i, T, frames) for i, T in enumerate(steps_per_episode)]
    for k in range(0, len(eps), shard_size):
        man.shards.append(write_shard(root / shard_name(k), k, eps[k:k + shard_size]))
        man.save(root)
    return eps


def test_roundtrip_preserves_episodes(tmp_path):
    eps = make_dataset(tmp_path / "d", [5, 7, 3], shard_size=2)
    ds = load_dataset(tmp_path / "d")
    assert ds.steps.tolist() == [5, 7, 3] and ds.n_frames == 5 + 7 + 3 + 3
    for i, e in enumerate(eps):
        got = ds.episode_arrays(i)
        assert np.array_equal(got["states"], e.states) and np.array_equal(got["actions"], e.actions)
        assert np.array_equal(got["agent_vel"], e.agent_vel)
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert man["episodes"] == 3 and len(man["shards"]) == 2 and len(man["shards"][0]["sha256"]) == 64
    assert not list((tmp_path / "d").glob("*.tmp"))


def test_frames_option_stores_gym_pixels(tmp_path):
    eps = make_dataset(tmp_path / "f", [4], frames=True)
    ds = load_dataset(tmp_path / "f")
    assert ds.frames is not None and ds.frames.shape == (5, 96, 96, 3)
    assert np.array_equal(ds.frames, eps[0].frames)
    lean = load_dataset(tmp_path / "f", frames=False)
    assert lean.frames is None and np.array_equal(lean.states, ds.states)


def test_corrupted_shard_is_named(tmp_path):
    make_dataset(tmp_path / "c", [4, 4], shard_size=1)
    p = tmp_path / "c" / shard_name(1)  # one episode per shard
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(DatasetError, match=r"shard_0000001\.npz: checksum mismatch"):
        load_dataset(tmp_path / "c")


def test_truncated_shard_is_named(tmp_path):
    make_dataset(tmp_path / "t", [4, 4], shard_size=1)
    p = tmp_path / "t" / shard_name(0)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"shard_0000000\.npz: truncated"):
        load_dataset(tmp_path / "t")
    # without a manifest entry the npz reader itself refuses it
    with pytest.raises(DatasetError, match="not a readable npz"):
        read_shard(p)


def test_missing_and_mismatched_shards(tmp_path):
    make_dataset(tmp_path / "m", [3, 3], shard_size=1)
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    # a shard swapped for another valid one: checksum catches it
    (tmp_path / "m" / shard_name(1)).write_bytes((tmp_path / "m" / shard_name(0)).read_bytes())
    with pytest.raises(DatasetError, match=r"shard_0000001\.npz: checksum mismatch"):
        load_dataset(tmp_path / "m")
    (tmp_path / "m" / shard_name(1)).unlink()
    with pytest.raises(DatasetError, match=r"shard_0000001\.npz: shard listed in the manifest is missing"):
        load_dataset(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json: manifest is not valid JSON"):
        load_dataset(tmp_path / "m")
    assert man["version"] == 1


def test_inconsistent_arrays_are_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, episode=np.array([0]), seed=np.array([0]), steps=np.array([5]),
             success=np.array([False]), states=np.zeros((5, 5)), agent_vel=np.zeros((6, 2)),
             coverage=np.zeros(6, np.float32), actions=np.zeros((5, 2)))
    with pytest.raises(DatasetError, match=r"bad\.npz: 'states' has shape \(5, 5\), expected \(6, 5\)"):
        read_shard(bad)


def test_pickled_arrays_are_never_loaded(tmp_path):
    bad = tmp_path / "obj.npz"
    np.savez(bad, episode=np.array([object()], dtype=object))
    with pytest.raises(DatasetError, match="not a readable npz"):
        read_shard(bad)
