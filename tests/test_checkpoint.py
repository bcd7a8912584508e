"""Checkpoints: round trip, fp16 export, and a clear error for every broken file. Never pickle."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from dva import checkpoint as ckpt
from dva.model.config import preset
from dva.model.dva import DVA
from dva.model.idm import IDM


def _models(seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny")
    m, idm = DVA(cfg), IDM(cfg)
    with torch.no_grad():
        for p in list(m.parameters()) + list(idm.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, m.eval(), idm.eval()


def _save(tmp_path, name="ck"):
    cfg, m, idm = _models()
    tensors = {**{f"model.{k}": v for k, v in m.state_dict().items()},
               **{f"idm.{k}": v for k, v in idm.state_dict().items()}}
    ckpt.save(tmp_path / name, tensors, {"config": cfg.to_dict(), "step": 7})
    return cfg, m, idm, tmp_path / name


def _outputs(m, idm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 3, 96, 96, generator=g) * 2 - 1
    noise = torch.randn(1, 3, 96, 96, generator=g)
    with torch.no_grad():
        cache = m.init_cache(1, "cpu")
        for t in range(3):
            ctx = m.observe(cache, x[:, t])
        return m.sample(ctx, torch.tensor([[100.0, 300.0]]), steps=2, noise=noise), idm(x[:, 0], x[:, 1], x[:, 2])


def test_round_trip_same_outputs(tmp_path):
    _, m, idm, path = _save(tmp_path)
    m2, idm2, meta = ckpt.load(path)
    assert meta["step"] == 7 and meta["config"]["name"] == "tiny"
    for a, b in zip(_outputs(m, idm), _outputs(m2, idm2)):
        assert torch.equal(a, b)
    # any of the three spellings of a checkpoint path works
    for p in (str(path) + ".json", str(path) + ".safetensors"):
        assert ckpt.load(p)[2]["step"] == 7


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _, _, _, path = _save(tmp_path)

    def boom(*a, **k):
        raise AssertionError("checkpoint loading used pickle")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    m, idm, _ = ckpt.load(path)
    assert m is not None and idm is not None


def test_missing_file(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"missing: .*nope\.json"):
        ckpt.load(tmp_path / "nope")
    _, _, _, path = _save(tmp_path)
    (tmp_path / "ck.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"missing: .*ck\.safetensors"):
        ckpt.load(path)


def test_corrupted_file(tmp_path):
    _, _, _, path = _save(tmp_path)
    st = tmp_path / "ck.safetensors"
    b = bytearray(st.read_bytes())
    b[len(b) // 2] ^= 0xFF
    st.write_bytes(bytes(b))
    with pytest.raises(ckpt.CheckpointError, match=r"ck\.safetensors: checksum mismatch"):
        ckpt.load(path)


def test_truncated_file(tmp_path):
    _, _, _, path = _save(tmp_path)
    st, js = ckpt.paths(path)
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.load(path)
    # even with a checksum that matches the truncated bytes, the reader names the file
    meta = json.loads(js.read_text())
    meta["sha256"] = ckpt._sha256(st)
    js.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=r"ck\.safetensors: unreadable safetensors file"):
        ckpt.load(path)


def test_bad_json(tmp_path):
    _, _, _, path = _save(tmp_path)
    js = ckpt.paths(path)[1]
    js.write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.load(path)
    js.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ckpt.CheckpointError, match="not a dva checkpoint"):
        ckpt.load(path)


def test_mismatched_config(tmp_path):
    _, _, _, path = _save(tmp_path)
    js = ckpt.paths(path)[1]
    meta = json.loads(js.read_text())
    meta["config"]["d_model"] = 64  # the tensors were saved for d_model=32
    js.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=r"does not match the model config: .*shape mismatch"):
        ckpt.load(path)
    meta["config"]["d_model"] = 32
    meta["config"]["depth_of_field"] = 3
    js.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=r"bad model config .*depth_of_field"):
        ckpt.load(path)


def test_missing_tensors_named(tmp_path):
    cfg, m, _, _ = _save(tmp_path)
    sd = {f"model.{k}": v for k, v in m.state_dict().items() if not k.startswith("decoder.out.")}
    ckpt.save(tmp_path / "part", sd, {"config": cfg.to_dict(), "step": 0})
    with pytest.raises(ckpt.CheckpointError, match=r"missing 2 tensors .*decoder\.out"):
        ckpt.load(tmp_path / "part")


def test_export_fp16(tmp_path):
    cfg, m, idm = _models()
    tensors = {**{f"model.{k}": v for k, v in m.state_dict().items()},
               **{f"ema.{k}": v * 0.5 for k, v in m.state_dict().items()},
               **{f"idm.{k}": v for k, v in idm.state_dict().items()},
               **{f"idm_ema.{k}": v for k, v in idm.state_dict().items()},
               "opt.0.exp_avg": torch.zeros(3)}
    ckpt.save(tmp_path / "train", tensors, {"config": cfg.to_dict(), "step": 3})
    st, js = ckpt.export(tmp_path / "train", tmp_path / "export")
    raw, meta = ckpt.read(tmp_path / "export")
    assert meta["tensors"] == ["idm", "model"] and meta["exported_from"]["step"] == 3
    assert all(v.dtype == torch.float16 for v in raw.values() if v.is_floating_point())
    m2, _, _ = ckpt.load(tmp_path / "export")
    w = m.state_dict()["decoder.stem.weight"] * 0.5  # the EMA weights were exported, not the raw ones
    torch.testing.assert_close(m2.state_dict()["decoder.stem.weight"], w, atol=1e-3, rtol=1e-3)
    assert m2.cfg.sampler_steps == cfg.sampler_steps
    ckpt.export(tmp_path / "train", tmp_path / "export1", sampler_steps=1)
    assert ckpt.load(tmp_path / "export1")[0].cfg.sampler_steps == 1
    with pytest.raises(ckpt.CheckpointError, match="sampler_steps"):
        ckpt.export(tmp_path / "train", tmp_path / "export0", sampler_steps=0)
    with pytest.raises(ckpt.CheckpointError, match="warp_anchor needs body_masks"):  # a model without body layers
        ckpt.export(tmp_path / "train", tmp_path / "export_anchor", warp_anchor=True)
    # --idm-from: the IDM of another run (an IDM-only one: `dva.train --model idm`) with SRC's video model
    other = {f"idm_ema.{k}": v + 1.0 for k, v in idm.state_dict().items() if v.is_floating_point()}
    ckpt.save(tmp_path / "idm_run", other, {"config": cfg.to_dict(), "step": 7})
    ckpt.export(tmp_path / "train", tmp_path / "swapped", idm_from=tmp_path / "idm_run")
    m3, idm3, meta3 = ckpt.load(tmp_path / "swapped")
    k = next(iter(other)).removeprefix("idm_ema.")
    torch.testing.assert_close(idm3.state_dict()[k], (idm.state_dict()[k] + 1.0).half().float())
    torch.testing.assert_close(m3.state_dict()["decoder.stem.weight"], w, atol=1e-3, rtol=1e-3)
    assert meta3["exported_from"]["idm_from"]["step"] == 7
    ckpt.save(tmp_path / "other_idm", other, {"config": {**cfg.to_dict(), "idm_ch": [8, 8, 8, 8]}, "step": 1})
    with pytest.raises(ckpt.CheckpointError, match="IDM config differs .*idm_ch"):
        ckpt.export(tmp_path / "train", tmp_path / "bad", idm_from=tmp_path / "other_idm")
