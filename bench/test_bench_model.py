"""Training throughput: predicted frames/s with context amortization (one optimizer step on B
sequences of L frames predicts B * (L - 1) frames), at L=9 (the default) and L=64 (longer than
the ring window, so training uses the windowed block-causal mask). fp32 on CPU (`tiny`, `s`),
bf16 autocast on CUDA (`s`, `m`; skipped without CUDA). Prediction latency is in
bench/test_bench_predict.py. Run: `python -m pytest bench/test_bench_model.py`.

Three ways, as in test_bench_predict: eager reference ops, torch.compile of the reference
(default mode: the step has a backward and an optimizer), and dvakern ops (Triton forward and
backward on CUDA). On CPU only eager runs: dvakern's training path on CPU *is* the reference
(its C++ fast path is inference-only), and compiling a training step of `s` takes minutes on 2 cores.
"""
from __future__ import annotations

import time

import pytest
import torch

import dvakern
from dva.model.config import preset
from dva.model.dva import DVA, param_count

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
if CUDA:
    CASES = [(p, 64, 9) for p in ("s", "m")] + [(p, 8, 64) for p in ("s", "m")]
else:  # quick CPU shapes: one step of `s` at L=64 already predicts 63 frames
    CASES = [("tiny", 8, 9), ("tiny", 2, 64), ("s", 4, 9), ("s", 1, 64)]


@pytest.mark.parametrize("impl", ("eager", "compile", "dvakern"))
@pytest.mark.parametrize("name,batch,seq_len", CASES, ids=[f"{p}-b{b}-L{L}" for p, b, L in CASES])
def test_train_step_throughput(benchmark, name, batch, seq_len, impl):
    if impl != "eager" and not CUDA:
        pytest.skip("CPU: dvakern training runs the reference ops; compile of a train step takes minutes")
    torch.manual_seed(0)
    dvakern.set_backend("ref" if impl in ("eager", "compile") else "auto")  # reset to 'auto' below
    cfg = preset(name)
    model = DVA(cfg).to(DEV).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, seq_len, 3, 96, 96, device=DEV) * 2 - 1
    acts = torch.rand(batch, seq_len, 2, device=DEV) * 512
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if CUDA else dict(device_type="cpu", enabled=False)

    fwd = torch.compile(model) if impl == "compile" else model

    def step():
        with torch.autocast(**amp):
            loss = fwd(x, acts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if CUDA:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    step()  # warm-up (and compilation) outside the timed region
    benchmark.extra_info.update(case=f"train/{name}/b{batch}/L{seq_len}", impl=impl, preset=name,
                                params=param_count(model), batch=batch, seq_len=seq_len, dtype="bf16 autocast" if CUDA else "fp32", items_per_call=batch * (seq_len - 1),
                                unit="predicted frames", warmup_compile_s=round(time.perf_counter() - t0, 3))
    try:
        benchmark.pedantic(step, rounds=10 if name == "tiny" else 3, iterations=1)
    finally:
        dvakern.set_backend("auto")
