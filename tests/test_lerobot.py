"""LeRobot-format datasets (dva.data.lerobot): a PushT dataset exported as LeRobot v2.1 and v3.0
reads back with its actions and (near-lossless video) frames, `tiny` trains on it through the
ordinary loader, stored frames are what the loader trains on, and bad folders name the file."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dva.data.loader import SequenceLoader
from dva.data.store import DatasetError, Manifest, load_dataset, shard_name, write_shard
from dva.pusht.render import render_frames
from tests.test_train import smooth_episode

pytest.importorskip("pyarrow")
pytest.importorskip("av")
from dva.data import lerobot  # noqa: E402


@pytest.fixture(scope="module")
def pusht(tmp_path_factory):
    """A dva dataset of 5 real gym-pusht episodes (states only), 20-31 steps."""
    root = tmp_path_factory.mktemp("pusht") / "src"
    root.mkdir()
    man = Manifest(config={"policy": "test-smooth-random"}, gym_pusht_version="0.1.8")
    eps = [smooth_episode(s, 20 + 3 * s) for s in range(5)]
    man.shards.append(write_shard(root / shard_name(0), 0, eps))
    man.save(root)
    return root


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_export_then_read_round_trips(pusht, tmp_path, version):
    src = load_dataset(pusht)
    out = lerobot.export(src, tmp_path / "lr", version=version, progress=False)
    assert not (tmp_path / "lr.tmp").exists()
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == version and info["total_episodes"] == 5
    assert info["total_frames"] == int(src.steps.sum()) + 5
    back = load_dataset(out)  # dispatches on meta/info.json
    assert back.states is None and back.manifest is None
    np.testing.assert_array_equal(back.steps, src.steps)
    np.testing.assert_allclose(back.actions, src.actions, atol=1e-4)  # float32 in the table
    truth = render_frames(torch.from_numpy(src.states)).numpy()
    assert back.frames.shape == truth.shape
    for e in range(5):  # every episode's frames, in order, near-lossless (yuv444p, crf 10)
        s, T = back.state_start[e], back.steps[e]
        assert psnr(back.frames[s:s + T + 1], truth[s:s + T + 1]) > 45, e
    assert lerobot.frame_size(out) == 96


def test_tiny_trains_on_an_exported_lerobot_dataset(pusht, tmp_path):
    from dva import checkpoint as ckpt
    from dva.train import main

    lr = lerobot.export(load_dataset(pusht), tmp_path / "lr", version="v3.0", progress=False)
    args = ["--preset", "tiny", "--data", f"demo={lr}", "--mix", "0:demo=1", "--out", str(tmp_path / "run"),
            "--backend", "ref", "--val-fraction", "0.5", "--steps", "6", "--batch-size", "2", "--seq-len", "4",
            "--log-every", "1", "--val-every", "3", "--val-batch", "2", "--val-dream", "2", "--threads", "1"]
    assert main(args) == 0
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 6 and all(np.isfinite(r["loss_dva"]) and np.isfinite(r["loss_idm"]) for r in logs)
    model, idm, meta = ckpt.load(tmp_path / "run" / "ckpt")
    acts = load_dataset(pusht).actions  # the action space is the data's (its stats), the image size too
    assert model.cfg.action_range == pytest.approx((acts.min(), acts.max()), abs=1e-3) == lerobot.action_range(lr)
    assert model.cfg.img == 96 and idm is not None and meta["step"] == 6 and meta["data_mix"]["sources"] == {"demo": str(lr)}
    # flow/body losses need simulator states, which a LeRobot dataset does not have: a clear refusal
    assert main(args[:-2] + ["--out", str(tmp_path / "run2"), "--warp", "--flow-loss", "0.1"]) == 2


def test_loader_trains_on_stored_frames(tmp_path):
    """A dataset collected with frames: the loader returns the stored frames, not re-renders."""
    ep = smooth_episode(7, 12)
    ep.frames = np.full((13, 96, 96, 3), 17, np.uint8)  # not what the states render
    man = Manifest(config={"policy": "t"}, gym_pusht_version="0.1.8")
    man.shards.append(write_shard(tmp_path / shard_name(0), 0, [ep]))
    man.save(tmp_path)
    b = SequenceLoader({"x": str(tmp_path)}, seq_len=4, batch_size=3, val_fraction=0.0).sample(0)
    assert (b["frames"] == 17).all() and b["states"] is not None


def test_bad_lerobot_folders_name_the_file_and_reason(pusht, tmp_path):
    lr = lerobot.export(load_dataset(pusht).head(2), tmp_path / "lr", progress=False)
    with pytest.raises(DatasetError, match="already exists"):
        lerobot.export(load_dataset(pusht), lr, progress=False)
    video = next((lr / "videos").rglob("episode_000001.mp4"))
    bad = tmp_path / "bad"
    shutil.copytree(lr, bad)
    (bad / video.relative_to(lr)).unlink()
    with pytest.raises(DatasetError, match=r"episode_000001\.mp4: video of episode 1 is missing"):
        load_dataset(bad)
    (bad / video.relative_to(lr)).write_bytes(b"not a video")
    with pytest.raises(DatasetError, match=r"episode_000001\.mp4: not a decodable video"):
        load_dataset(bad)
    info = json.loads((lr / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [7]
    (bad / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json: the action is \[7\]-dimensional"):
        load_dataset(bad)
    (bad / "meta" / "info.json").write_text("{")
    with pytest.raises(DatasetError, match=r"info\.json: not valid JSON"):
        load_dataset(bad)
