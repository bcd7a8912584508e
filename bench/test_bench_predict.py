"""Prediction latency / throughput, the same model three ways in one run (DESIGN.md section 6):

  impl=eager    plain PyTorch reference ops (dvakern backend 'ref'), eager
  impl=compile  the same reference under torch.compile(mode="reduce-overhead")
  impl=dvakern  dvakern ops (backend 'auto': Triton on CUDA, C++ fast paths on CPU);
                on CUDA the step is captured in a CUDA graph

One call = one control step: encode a real frame, one transformer step on the ring KV cache,
`steps` sampler steps and the IDM, at batch B. frames/s = B / median. The ratio column of the
README table is eager median / impl median within the same run.

CPU (quick): tiny and s at batch 1, 4 sampler steps (s also at 1 step, with and without a warp
head: `s+warp` the dense one, `s+body` 3 body layers, the T and disc rigid, `s+body+anchor`
the same predicting from an anchored dream's context), on one torch thread as dva.control runs;
compile only for tiny (its compile alone takes minutes for s on 2 cores); one eager row of s
on 2 threads (`-t2`) shows why one thread is the default. CUDA: s and m at batch 1/64/256,
1/2/4/8 steps.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

import dvakern
from dva.model.config import preset
from dva.model.dva import DVA
from dva.model.idm import IDM

CUDA = torch.cuda.is_available()
if CUDA:
    CASES = [(p, b, s) for p in ("s", "m") for b in (1, 64, 256) for s in (1, 2, 4, 8)]
else:
    CASES = [("tiny", 1, 4), ("s", 1, 1), ("s+warp", 1, 1), ("s+body", 1, 1), ("s+body+anchor", 1, 1), ("s", 1, 4)]
THREADS = [(c, 1) for c in CASES] + ([] if CUDA else [(("s", 1, 4), 2)])
IMPLS = ("eager", "compile", "dvakern")
HEADS = {"warp": dict(warp=True), "body": dict(warp=True, warp_layers=3, body_masks=0.05),  # "s+warp": preset s + that head
         "anchor": dict(warp_anchor=True)}  # anchored dreams: the step predicts from a dreamed frame's context
# batch-1 CPU prediction runs on one torch thread, as dva.control does (see conftest.one_cpu_thread)
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _build(name, batch, dev):
    torch.manual_seed(0)
    base, *heads = name.split("+")
    cfg = preset(base, **{k: v for h in heads for k, v in HEADS[h].items()})
    model, idm = DVA(cfg).to(dev).eval(), IDM(cfg).to(dev).eval()
    cache = model.init_cache(batch, dev)
    frame = torch.rand(batch, 3, 96, 96, device=dev) * 2 - 1
    action = torch.rand(batch, 2, device=dev) * 512
    noise = torch.randn(batch, 3, 96, 96, device=dev)
    return model, idm, cache, frame, action, noise


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case,threads", THREADS,
                         ids=[f"{p}-b{b}-s{s}" + ("" if t == 1 else f"-t{t}") for (p, b, s), t in THREADS])
def test_predict(benchmark, case, threads, impl):
    name, batch, steps = case
    if impl == "compile" and not CUDA and name != "tiny":
        pytest.skip("compile of preset s on 2 CPU cores takes minutes; measured for tiny only on CPU")
    if threads != 1:
        if impl != "eager":
            pytest.skip("the thread-count row is measured on the eager reference only")
        torch.set_num_threads(threads)  # one_cpu_thread restores the count afterwards
    dev = torch.device("cuda" if CUDA else "cpu")
    model, idm, cache, frame, action, noise = _build(name, batch, dev)

    # an anchored dream's context: the T and disc layers sample the last real frame (here: the
    # frame itself) by a composed motion, one more warp per decoder call
    motion = torch.tensor([math.cos(0.1), math.sin(0.1), 0.5, -0.5], device=dev).expand(batch, 2, 4)

    def step(frame, action, noise):
        ctx = model.observe(cache, frame)
        if model.cfg.warp_anchor:
            ctx.anchor, ctx.motion = frame, motion
        nxt = model.sample(ctx, action, steps=steps, noise=noise)
        return nxt, idm(frame, frame, nxt)

    backend = "ref" if impl in ("eager", "compile") else "auto"
    with dvakern.backend(backend), torch.inference_mode():
        fn = step
        t0 = time.perf_counter()
        if impl == "compile":
            fn = torch.compile(step, mode="reduce-overhead", fullgraph=False)
        elif impl == "dvakern" and CUDA:
            # capture one step in a CUDA graph (static inputs; the cache is updated in place)
            for _ in range(3):
                step(frame, action, noise)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step(frame, action, noise)
            fn = lambda *a: g.replay()  # noqa: E731
        for _ in range(3):  # warm-up (and compilation) outside the timed region
            fn(frame, action, noise)
        _sync()
        warm_s = time.perf_counter() - t0

        def call():
            fn(frame, action, noise)
            _sync()

        benchmark.extra_info.update(case=f"{name}/b{batch}/steps{steps}" + ("" if threads == 1 else f"/t{threads}"), impl=impl, preset=name, batch=batch,
                                    steps=steps, dtype="fp32", threads=torch.get_num_threads(), items_per_call=batch, unit="frames",
                                    warmup_compile_s=round(warm_s, 3), backend=dvakern.get_backend())
        benchmark.pedantic(call, rounds=5 if name.startswith("s") and not CUDA else 20, iterations=1, warmup_rounds=1)
