"""Model speed: per-predicted-frame latency (batch 1: encode the real frame, one transformer step
on the ring cache, 4 sampler steps, IDM) and training throughput (predicted frames/s with
context amortization, fp32 on CPU, bf16 autocast on CUDA). `tiny`/`s` on CPU; `m` on a GPU
(skipped without CUDA). Run: `python -m pytest bench/test_bench_model.py`.
"""
from __future__ import annotations

import pytest
import torch

from dva.model.config import preset
from dva.model.dva import DVA, param_count
from dva.model.idm import IDM

CPU_PRESETS = ["tiny", "s"]


def _device(name):
    if name == "m":
        if not torch.cuda.is_available():
            pytest.skip("preset m is benchmarked on a GPU only (unmeasured here)")
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("name", CPU_PRESETS + ["m"])
def test_predict_frame_latency(benchmark, name):
    """One control step at batch 1 -> frames/s = 1 / median."""
    dev = _device(name)
    torch.manual_seed(0)
    cfg = preset(name)
    model, idm = DVA(cfg).to(dev).eval(), IDM(cfg).to(dev).eval()
    cache = model.init_cache(1, dev)
    frame = torch.rand(1, 3, 96, 96, device=dev) * 2 - 1
    action = torch.tensor([[256.0, 300.0]], device=dev)

    def step():
        with torch.inference_mode():
            ctx = model.observe(cache, frame)
            nxt = model.sample(ctx, action, steps=4)
            a = idm(frame, frame, nxt)
        _sync(dev)
        return a

    for _ in range(3):
        step()
    benchmark.extra_info.update(preset=name, params=param_count(model) + param_count(idm), batch=1,
                                sampler_steps=4, dtype="fp32", metric="s per predicted frame")
    benchmark.pedantic(step, rounds=20 if name != "tiny" else 30, iterations=1)


@pytest.mark.parametrize("name", CPU_PRESETS + ["m"])
def test_train_step_throughput(benchmark, name):
    """One optimizer step on B sequences of L=9 frames -> (B * 8) / median predicted frames/s."""
    dev = _device(name)
    torch.manual_seed(0)
    cfg = preset(name)
    model = DVA(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, L = (64, 9) if dev.type == "cuda" else (8, 9)
    x = torch.rand(B, L, 3, 96, 96, device=dev) * 2 - 1
    acts = torch.rand(B, L, 2, device=dev) * 512
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else dict(device_type="cpu",
                                                                                         enabled=False)

    def step():
        with torch.autocast(**amp):
            loss = model(x, acts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)

    step()
    benchmark.extra_info.update(preset=name, batch=B, seq_len=L, predicted_frames_per_step=B * (L - 1),
                                dtype="bf16 autocast" if dev.type == "cuda" else "fp32",
                                metric="s per step; predicted frames/s = predicted_frames_per_step / median")
    benchmark.pedantic(step, rounds=5 if name != "tiny" else 10, iterations=1)
