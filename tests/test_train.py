"""`python -m dva.train` on a real (tiny) dataset on disk: the tiny model overfits, --resume
continues exactly, SIGINT saves and exits cleanly, bad arguments give clear errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dva import checkpoint as ckpt
from dva.data.store import Episode, Manifest, shard_name, write_shard
from dva.train import main, parse_args, train

ROOT = Path(__file__).resolve().parents[1]


def smooth_episode(seed: int, steps: int) -> Episode:
    """A real gym-pusht episode under a smooth random pointer, state-only (frames re-rendered)."""
    from dva.pusht.env import PushTEnv

    env = PushTEnv(pixels=False)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed)
    S, V, A, C = [obs["state"]], [obs["agent_vel"]], [], [info["coverage"]]
    target = obs["state"][:2].copy()
    for _ in range(steps):
        target = np.clip(target + rng.normal(0, 25, 2), 40, 470)
        obs, _, _, _, info = env.step(target.copy())
        A.append(target.copy()), S.append(obs["state"]), V.append(obs["agent_vel"]), C.append(info["coverage"])
    return Episode(seed, np.stack(S), np.stack(V), np.stack(A), np.array(C, np.float32))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two sources written through dva.data.store; 'val' episodes come from the loader's hash split."""
    root = tmp_path_factory.mktemp("data")
    for name, seeds in (("random", range(0, 12)), ("expert", range(50, 56))):
        man = Manifest(config={"policy": "test-smooth-random"}, gym_pusht_version="0.1.8")
        eps = [smooth_episode(s, 24) for s in seeds]
        (root / name).mkdir()
        for k in range(0, len(eps), 4):
            man.shards.append(write_shard(root / name / shard_name(k // 4), k, eps[k:k + 4]))
        man.save(root / name)
    return {k: str(root / k) for k in ("random", "expert")}


def args(dataset, out, *extra):
    return ["--preset", "tiny", "--data", f"random={dataset['random']}", "--data", f"expert={dataset['expert']}",
            "--mix", "0:random=0.5,expert=0.5", "--out", str(out), "--backend", "ref", "--val-fraction", "0.3", *extra]


def losses(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_tiny_overfits_tiny_dataset(dataset, tmp_path):
    """One fixed batch (a dataset of one sequence per source would be the same): the video
    model's loss falls by 2x and the IDM's by 3x within 60 tiny steps (~10 s on an idle 2-core
    CPU)."""
    torch.manual_seed(0)
    cfg = parse_args(args(dataset, tmp_path, "--steps", "60", "--batch-size", "4", "--seq-len", "5",
                          "--lr", "3e-3", "--warmup", "5", "--log-every", "1", "--val-every", "0",
                          "--ckpt-every", "0", "--val-batch", "2", "--val-dream", "3"))
    # overfit = the same batch every step: wrap the loader's sample so step k -> batch 0
    import dva.train as T

    real = T.make_loader

    def fixed(*a, **k):
        loader = real(*a, **k)
        b0 = loader.sample(0)
        loader.sample = lambda step: b0
        return loader

    T.make_loader = fixed
    try:
        res = train(cfg)
    finally:
        T.make_loader = real
    log = losses(tmp_path)
    first = np.mean([r["loss_dva"] for r in log[:3]])
    last = np.mean([r["loss_dva"] for r in log[-5:]])
    assert last < first / 2, f"video loss {first:.4f} -> {last:.4f}"
    first_i = np.mean([r["loss_idm"] for r in log[:3]])
    last_i = np.mean([r["loss_idm"] for r in log[-5:]])
    assert last_i < first_i / 3, f"IDM loss {first_i:.4f} -> {last_i:.4f}"
    assert res["step"] == 60
    v = res["val"]
    assert {"psnr_1step", "psnr_ar", "idm_err_px"} <= set(v) and len(v["psnr_ar_per_step"]) == 3
    assert (tmp_path / "dream_latest.png").stat().st_size > 0
    m, idm, meta = ckpt.load(tmp_path / "ckpt")
    assert meta["step"] == 60 and meta["data_mix"]["sources"]["random"] == dataset["random"]


def test_resume_continues_exactly(dataset, tmp_path):
    common = ("--steps", "6", "--batch-size", "2", "--seq-len", "4", "--val-every", "0", "--ckpt-every", "0",
              "--log-every", "1", "--val-batch", "2", "--val-dream", "2")
    assert main(args(dataset, tmp_path / "a", *common)) == 0
    # the same command starts the run (no checkpoint yet) and continues it
    assert main(args(dataset, tmp_path / "b", *common, "--stop-after", "3", "--resume", "auto")) == 0
    assert ckpt.read(tmp_path / "b" / "ckpt")[1]["step"] == 3
    assert main(args(dataset, tmp_path / "b", *common, "--resume", "auto")) == 0
    ta, ma = ckpt.read(tmp_path / "a" / "ckpt")
    tb, mb = ckpt.read(tmp_path / "b" / "ckpt")
    assert ma["step"] == mb["step"] == 6 and set(ta) == set(tb)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [r["step"] for r in lb] == list(range(1, 7))
    assert np.allclose([r["loss_dva"] for r in la], [r["loss_dva"] for r in lb], rtol=1e-5)


def test_resume_with_other_config_is_refused(dataset, tmp_path, capsys):
    common = ("--steps", "2", "--batch-size", "2", "--seq-len", "4", "--val-every", "0", "--val-batch", "2",
              "--val-dream", "2", "--model", "dva")
    assert main(args(dataset, tmp_path, *common)) == 0
    capsys.readouterr()
    assert main(args(dataset, tmp_path, *common, "--resume", "auto", "--sampler-steps", "2")) == 2
    err = capsys.readouterr().err
    assert "model config differs" in err and "sampler_steps: 4 vs 2" in err
    assert main(args(dataset, tmp_path, *common[2:], "--steps", "3", "--resume", "auto")) == 2  # another schedule
    err = capsys.readouterr().err
    assert "other training flags" in err and "--steps 2 vs 3" in err
    st = tmp_path / "ckpt.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    assert main(args(dataset, tmp_path, *common, "--resume", "auto")) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_init_starts_a_new_run_from_weights(dataset, tmp_path, capsys):
    """--init loads raw and EMA weights, starts at step 0 with a fresh optimizer, and may change
    loss-only fields (motion_weight); a different architecture is refused by name."""
    common = ("--steps", "2", "--batch-size", "2", "--seq-len", "4", "--val-every", "0", "--val-batch", "2",
              "--val-dream", "2", "--ckpt-every", "0")
    assert main(args(dataset, tmp_path / "a", *common)) == 0
    assert main(args(dataset, tmp_path / "b", *common, "--stop-after", "1", "--log-every", "1",
                     "--init", str(tmp_path / "a" / "ckpt"),
                     "--motion-weight", "3")) == 0
    ta, ma = ckpt.read(tmp_path / "a" / "ckpt")
    tb, mb = ckpt.read(tmp_path / "b" / "ckpt")
    assert mb["step"] == 1 and mb["config"]["motion_weight"] == 3.0 and ma["config"]["motion_weight"] == 20.0
    k = "model.decoder.stem.weight"
    # one step of a fresh AdamW moves each weight by at most ~lr (warmup LR), so b stays near a
    lr = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[0])["lr"]
    assert 0 < (tb[k] - ta[k]).abs().max() <= 1.5 * lr
    # --warp adds the zero-initialised warp head to a checkpoint without one; the rest must match
    assert main(args(dataset, tmp_path / "w", *common, "--stop-after", "1", "--init", str(tmp_path / "a" / "ckpt"),
                     "--warp")) == 0
    tw, mw = ckpt.read(tmp_path / "w" / "ckpt")
    assert mw["config"]["warp"] and "model.decoder.flow.weight" in tw and "ema.decoder.flow.weight" in tw
    assert main(args(dataset, tmp_path / "v", *common, "--stop-after", "1", "--resume", "auto",
                     "--init", "", "--warp")) == 0  # a fresh warp run
    # an exported (inference-only, fp16 EMA) copy starts both the weights and their EMA; --flow-loss trains
    # the warp head on the sources' states
    ckpt.export(tmp_path / "w" / "ckpt", tmp_path / "exp")
    assert main(args(dataset, tmp_path / "f", *common, "--stop-after", "1", "--init", str(tmp_path / "exp"),
                     "--warp", "--flow-loss", "0.5")) == 0
    tf, mf = ckpt.read(tmp_path / "f" / "ckpt")
    assert mf["config"]["flow_loss"] == 0.5
    for part in ("model", "ema"):
        k = f"{part}.decoder.stem.weight"
        assert (tf[k] - tw["ema.decoder.stem.weight"]).abs().max() <= 1.5 * lr + 1e-3  # fp16 rounding
    # --warp-layers adds rigid layers to the dense head; the way back is refused
    assert main(args(dataset, tmp_path / "r", *common, "--stop-after", "1", "--init", str(tmp_path / "w" / "ckpt"),
                     "--warp", "--warp-layers", "3")) == 0
    tr, mr = ckpt.read(tmp_path / "r" / "ckpt")
    assert mr["config"]["warp_layers"] == 3 and "ema.decoder.rigid.mask.weight" in tr and "ema.decoder.flow.weight" in tr
    k = "ema.decoder.stem.weight"
    assert (tr[k] - tw[k]).abs().max() <= 1.5 * lr  # the rest was loaded
    # --prev-action adds the zero-initialised input of the executed action; --policy-loss trains the free dream
    assert main(args(dataset, tmp_path / "p", *common, "--stop-after", "1", "--init", str(tmp_path / "a" / "ckpt"),
                     "--prev-action", "--policy-loss", "0.5", "--action-dropout", "0.5")) == 0
    tp, mp = ckpt.read(tmp_path / "p" / "ckpt")
    assert mp["config"]["prev_action"] and mp["config"]["policy_loss"] == 0.5 and "ema.decoder.null_prev" in tp
    assert (tp["ema.decoder.stem.weight"] - ta["ema.decoder.stem.weight"]).abs().max() <= 1.5 * lr
    # --action-aux --intent-maps adds the action head and its (zero-initialised) convs on the encoder maps
    assert main(args(dataset, tmp_path / "i", *common, "--stop-after", "1", "--init", str(tmp_path / "a" / "ckpt"),
                     "--action-aux", "1", "--intent-maps")) == 0
    ti, mi = ckpt.read(tmp_path / "i" / "ckpt")
    assert mi["config"]["intent_maps"] and "ema.intent_conv.0.weight" in ti and "model.action_head.0.weight" in ti
    assert (ti["ema.decoder.stem.weight"] - ta["ema.decoder.stem.weight"]).abs().max() <= 1.5 * lr
    capsys.readouterr()
    assert main(args(dataset, tmp_path / "c", *common, "--init", str(tmp_path / "w" / "ckpt"))) == 2
    assert "warp: True vs False" in capsys.readouterr().err  # the head is never dropped silently
    assert main(args(dataset, tmp_path / "c", *common, "--init", str(tmp_path / "r" / "ckpt"), "--warp")) == 2
    assert "warp_layers: 3 vs 0" in capsys.readouterr().err
    assert main(args(dataset, tmp_path / "c", *common, "--init", str(tmp_path / "r" / "ckpt"), "--warp",
                     "--warp-layers", "3", "--body-masks", "0.1")) == 2  # body masks change what layer 0 does
    assert "body_masks" in capsys.readouterr().err
    assert main(args(dataset, tmp_path / "c", *common, "--init", str(tmp_path / "a" / "ckpt"), "--preset", "s")) == 2
    assert "model config differs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(args(dataset, tmp_path / "c", "--init", "x", "--resume", "auto"))
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("bad,msg", [
    (["--seq-len", "1"], "--seq-len must be >= 3"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--mix", "0:random=1,goal=1"], "--mix names sources ['goal']"),
    (["--mix", "zero:random=1"], "--mix: cannot parse phase"),
    (["--data", "nowhere=/does/not/exist"], "directory '/does/not/exist' does not exist"),
    (["--preset", "xl"], "invalid choice: 'xl'"),
    (["--ema", "1.5"], "--ema must be in [0, 1)"),
    (["--self-forcing", "2"], "self_forcing must be in [0, 1], got 2.0"),
    (["--self-forcing-depth", "0"], "self_forcing_depth must be in [1, 16] and > 1 only with self_forcing > 0, got 0"),
    (["--self-forcing-depth", "3"], "got 3 (self_forcing=0.0)"),
    (["--loss", "huber"], "invalid choice: 'huber'"),
])
def test_bad_arguments(dataset, tmp_path, capsys, bad, msg):
    with pytest.raises(SystemExit) as e:
        parse_args(args(dataset, tmp_path, *bad))
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_sigint_saves_and_exits_cleanly(dataset, tmp_path):
    cmd = [sys.executable, "-m", "dva.train", *args(dataset, tmp_path, "--steps", "100000", "--batch-size", "2",
                                                  "--seq-len", "4", "--log-every", "1", "--val-every", "0",
                                                  "--ckpt-every", "0", "--val-batch", "2", "--val-dream", "2")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while (not log.exists() or len(log.read_text().splitlines()) < 2) and time.time() < deadline:
        assert p.poll() is None, p.communicate()[1][-2000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert "(signal)" in out
    meta = ckpt.read(tmp_path / "ckpt")[1]
    assert 2 <= meta["step"] < 100000


def test_ddp_two_ranks_on_gloo_without_stride_warnings(dataset, tmp_path):
    """torchrun with 2 CPU ranks trains and saves; DDP no longer warns that grad strides do not match
    its bucket views (1x1 conv weight grads with odd strides on size-1 dims; reproduced at batch 4 x 9)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dva.train",
           *args(dataset, tmp_path, "--model", "both", "--steps", "2", "--batch-size", "4", "--seq-len", "9",
                 "--val-every", "0", "--ckpt-every", "0", "--threads", "1", "--log-every", "1")]
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Grad strides do not match" not in p.stderr, p.stderr[-3000:]
    assert ckpt.read(tmp_path / "ckpt")[1]["step"] == 2


def test_validation_sequences_do_not_depend_on_the_seed(dataset, tmp_path):
    """Runs with different --seed validate on the same held-out sequences (and noise), so their
    curves compare: the copy-frame-t baselines, which depend only on the data, are equal."""
    common = ("--steps", "1", "--batch-size", "2", "--seq-len", "4", "--val-every", "1", "--val-batch", "2",
              "--val-dream", "2", "--ckpt-every", "0")
    got = []
    for seed in ("0", "3"):
        assert main(args(dataset, tmp_path / seed, *common, "--seed", seed)) == 0
        got.append(ckpt.read(tmp_path / seed / "ckpt")[1]["metrics"])
    assert got[0]["psnr_1step_copy"] == got[1]["psnr_1step_copy"] and got[0]["psnr_ar_copy"] == got[1]["psnr_ar_copy"]
