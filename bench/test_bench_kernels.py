"""dvakern ops against their references and peers (pytest-benchmark).

    python -m pytest bench/test_bench_kernels.py            # medians land in bench/results/<device>.json

CPU (default, small shapes, < 1 min): the registered ops' CPU paths (C++ extension where built) vs
the plain-PyTorch references and peers (SDPA with an explicit block mask, FlexAttention where it
runs). CUDA (full model shapes): the Triton kernels vs references, SDPA backends, FlexAttention,
cuDNN conv + separate norm. Groups pair the contenders: compare medians within a group.

CPU runs use ONE torch thread (restored afterwards): on the shared 2-core development machine,
2-thread OpenMP ops were dominated by contention with other processes (F.group_norm on
(1, 64, 48, 48): 15.4 ms with 2 threads vs 0.055 ms with 1, measured side by side), which would
make every ratio meaningless. CPU rounds are capped (pedantic) so the file stays under a minute.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dvakern
from dvakern import _ext
from dvakern.rope import apply_rope_ref

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DT = torch.bfloat16 if CUDA else torch.float32


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _run(benchmark, fn, cpu_rounds: int = 20):
    if CUDA:
        def timed():
            fn()
            torch.cuda.synchronize()
        timed()
        benchmark(timed)
    else:
        benchmark.pedantic(fn, rounds=cpu_rounds, iterations=1, warmup_rounds=2)


def _triton_ok():
    return CUDA and dvakern.info()["triton"]


# -------------------------------------------------------------------------- frame attention
FA_SHAPES = [(4, 4, 9, 16, 64)] if not CUDA else [(64, 8, 9, 16, 64), (16, 8, 32, 16, 64), (256, 4, 9, 4, 64)]


def _block_mask(S, N, device):
    f = torch.arange(S, device=device) // N
    return f[None, :] <= f[:, None]  # (S, S) True = attend


@pytest.mark.parametrize("shape", FA_SHAPES, ids=lambda s: "B{}H{}T{}N{}D{}".format(*s))
@pytest.mark.parametrize("impl", ["ref", "sdpa_mask", "flex", "triton"])
def test_frame_attention(benchmark, shape, impl):
    B, H, T, N, D = shape
    S = T * N
    benchmark.group = f"frame_attention fwd {shape} {DEV} {DT}"
    q, k, v = (torch.randn(B, H, S, D, device=DEV, dtype=DT) for _ in range(3))
    if impl == "ref":
        fn = lambda: dvakern.frame_attn_ref(q, k, v, N)  # noqa: E731
    elif impl == "sdpa_mask":
        mask = _block_mask(S, N, DEV)
        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    elif impl == "flex":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            bm = create_block_mask(lambda b, h, qi, ki: ki // N <= qi // N, None, None, S, S, device=DEV)
            flex = torch.compile(flex_attention, dynamic=False)
            fn = lambda: flex(q, k, v, block_mask=bm)  # noqa: E731
            fn()
        except Exception as e:  # FlexAttention on this device/torch: report why, do not fake a number
            pytest.skip(f"FlexAttention unavailable here: {type(e).__name__}: {str(e)[:120]}")
    else:
        if not _triton_ok():
            pytest.skip("Triton kernels need CUDA (the interpreter is not a speed measurement)")
        fn = lambda: dvakern.frame_attention(q, k, v, N)  # noqa: E731
        dvakern.set_backend("triton")
    try:
        _run(benchmark, fn)
    finally:
        dvakern.set_backend("auto")


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_frame_attention_fwd_bwd(benchmark, impl):
    B, H, T, N, D = FA_SHAPES[0]
    S = T * N
    benchmark.group = f"frame_attention fwd+bwd {FA_SHAPES[0]} {DEV} {DT}"
    q, k, v = (torch.randn(B, H, S, D, device=DEV, dtype=DT, requires_grad=True) for _ in range(3))
    if impl == "triton" and not _triton_ok():
        pytest.skip("Triton kernels need CUDA")

    def fn():
        with dvakern.backend(impl if impl == "triton" else "ref"):
            dvakern.frame_attention(q, k, v, N).sum().backward()
    _run(benchmark, fn)


# ------------------------------------------------------------------------------ ring decode
RD_SHAPES = [(1, 4, 8, 16, 64)] if not CUDA else [(1, 8, 32, 16, 64), (64, 8, 16, 16, 64), (256, 4, 8, 4, 64)]


@pytest.mark.parametrize("shape", RD_SHAPES, ids=lambda s: "B{}H{}W{}N{}D{}".format(*s))
@pytest.mark.parametrize("impl", ["ref", "sdpa_window", "triton"])
def test_ring_decode(benchmark, shape, impl):
    """One decode step at a full window: append + attention over W frames."""
    B, H, W, N, D = shape
    benchmark.group = f"ring_decode {shape} {DEV} {DT}"
    kc, vc = (torch.randn(B, H, W, N, D, device=DEV, dtype=DT) for _ in range(2))
    slot = torch.arange(W, device=DEV)
    pos = torch.tensor(W, device=DEV)
    q, kn, vn = (torch.randn(B, H, N, D, device=DEV, dtype=DT) for _ in range(3))
    if impl == "ref":
        fn = lambda: dvakern.ring_decode_attn_ref(q, kn, vn, kc, vc, slot, pos)  # noqa: E731
    elif impl == "sdpa_window":
        # the peer: same append, keys rotated by age with the reference RoPE, then SDPA (no mask
        # needed at a full window)
        def fn():
            s = torch.remainder(pos, W).view(1)
            kc.index_copy_(2, s, kn.unsqueeze(2))
            vc.index_copy_(2, s, vn.unsqueeze(2))
            slot.index_copy_(0, s, pos.view(1))
            kpos = (slot - pos).repeat_interleave(N)
            kr = apply_rope_ref(kc.reshape(B, H, W * N, D), kpos)
            return F.scaled_dot_product_attention(q, kr, vc.reshape(B, H, W * N, D))
    else:
        if not _triton_ok():
            pytest.skip("Triton kernels need CUDA")
        def fn():
            with dvakern.backend("triton"):
                return dvakern.ring_decode_attention(q, kn, vn, kc, vc, slot, pos)
    _run(benchmark, fn)


# ---------------------------------------------------------------------------- gn_mod_silu
GN_SHAPES = [(1, 64, 48, 48, 8), (8, 128, 24, 24, 8)] if not CUDA else \
    [(1, 64, 48, 48, 8), (1, 128, 96, 96, 32), (64, 128, 24, 24, 8), (256, 64, 48, 48, 8)]


@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "B{}C{}H{}W{}G{}".format(*s))
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("impl", ["ref", "compile", "csrc", "triton"])
def test_gn_mod_silu(benchmark, shape, layout, impl):
    B, C, H, W, G = shape
    benchmark.group = f"gn_mod_silu fwd {shape} {layout} {DEV} {DT}"
    x = torch.randn(B, C, H, W, device=DEV, dtype=DT)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.randn(C, device=DEV, dtype=DT), torch.randn(C, device=DEV, dtype=DT)
    s, sh = torch.randn(B, C, device=DEV, dtype=DT), torch.randn(B, C, device=DEV, dtype=DT)
    if impl == "ref":
        fn = lambda: dvakern.gn_mod_silu_ref(x, w, b, s, sh, G)  # noqa: E731
    elif impl == "compile":
        if not CUDA:
            pytest.skip("torch.compile peer measured on CUDA only (CPU inductor compile time blows the budget)")
        comp = torch.compile(dvakern.gn_mod_silu_ref, dynamic=False)
        fn = lambda: comp(x, w, b, s, sh, G)  # noqa: E731
    elif impl == "csrc":
        if CUDA or not _ext.has("gn_mod_silu_fwd_cpu"):
            pytest.skip("C++ CPU op not built (python -m dvakern.build_ext) or not a CPU run")
        fn = lambda: torch.ops.dvakern.gn_mod_silu_fwd_cpu(x, w, b, s, sh, G, 1e-5)  # noqa: E731
    else:
        if not _triton_ok():
            pytest.skip("Triton kernels need CUDA")
        def fn():
            with dvakern.backend("triton"):
                return dvakern.gn_mod_silu(x, w, b, s, sh, G)
    bytes_moved = 2 * x.numel() * x.element_size()
    benchmark.extra_info["bytes_moved"] = bytes_moved  # GB/s = bytes_moved / median
    with torch.no_grad():
        _run(benchmark, fn)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_gn_mod_silu_fwd_bwd(benchmark, impl):
    B, C, H, W, G = GN_SHAPES[0]
    benchmark.group = f"gn_mod_silu fwd+bwd {GN_SHAPES[0]} cl {DEV} {DT}"
    if impl == "triton" and not _triton_ok():
        pytest.skip("Triton kernels need CUDA")
    x = torch.randn(B, C, H, W, device=DEV, dtype=DT).to(memory_format=torch.channels_last).requires_grad_()
    w, b = (torch.randn(C, device=DEV, dtype=DT, requires_grad=True) for _ in range(2))
    s, sh = (torch.randn(B, C, device=DEV, dtype=DT, requires_grad=True) for _ in range(2))

    def fn():
        with dvakern.backend(impl if impl == "triton" else "ref"):
            dvakern.gn_mod_silu(x, w, b, s, sh, G).sum().backward()
    _run(benchmark, fn)


# ------------------------------------------------------------------------ fused conv block
CONV_SHAPES = [(1, 64, 48, 48, 64, 8)] if not CUDA else \
    [(1, 64, 48, 48, 64, 8), (1, 128, 24, 24, 128, 8), (64, 64, 48, 48, 64, 8), (256, 128, 24, 24, 128, 8)]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "B{}Cin{}H{}W{}Cout{}G{}".format(*s))
@pytest.mark.parametrize("impl", ["unfused_ref", "unfused_kernels", "fused_triton"])
def test_gn_silu_conv3x3(benchmark, shape, impl):
    """The fused block vs cuDNN/oneDNN conv + separate norm (reference, or the dvakern gn kernel)."""
    B, C, H, W, COUT, G = shape
    benchmark.group = f"gn_silu_conv3x3 {shape} cl {DEV} {DT}"
    x = torch.randn(B, C, H, W, device=DEV, dtype=DT).to(memory_format=torch.channels_last)
    gw, gb = torch.randn(C, device=DEV, dtype=DT), torch.randn(C, device=DEV, dtype=DT)
    s, sh = torch.randn(B, C, device=DEV, dtype=DT), torch.randn(B, C, device=DEV, dtype=DT)
    cw = (torch.randn(COUT, C, 3, 3, device=DEV, dtype=DT) / math.sqrt(9 * C)).to(memory_format=torch.channels_last)
    cb = torch.randn(COUT, device=DEV, dtype=DT)
    res = torch.randn(B, COUT, H, W, device=DEV, dtype=DT).to(memory_format=torch.channels_last)
    if impl == "unfused_ref":
        def fn():
            return F.conv2d(dvakern.gn_mod_silu_ref(x, gw, gb, s, sh, G), cw, cb, padding=1) + res
    elif impl == "unfused_kernels":
        if not (CUDA or _ext.has("gn_mod_silu_fwd_cpu")):
            pytest.skip("no gn_mod_silu kernel on this device (CPU: build the C++ op)")
        def fn():  # gn via the dvakern op (Triton on CUDA, C++ on CPU) + cuDNN/oneDNN conv
            with dvakern.backend("auto"):
                return F.conv2d(dvakern.gn_mod_silu(x, gw, gb, s, sh, G), cw, cb, padding=1) + res
    else:
        if not _triton_ok():
            pytest.skip("Triton kernels need CUDA")
        def fn():
            with dvakern.backend("triton"):
                return dvakern.gn_silu_conv3x3(x, gw, gb, s, sh, G, cw, cb, res)
    with torch.no_grad():
        _run(benchmark, fn)


# ------------------------------------------------------------------------------ flow_step
@pytest.mark.parametrize("impl", ["ref", "torch_inplace", "triton"])
def test_flow_step(benchmark, impl):
    shape = (1, 3, 96, 96) if not CUDA else (256, 3, 96, 96)
    benchmark.group = f"flow_step {shape} {DEV} {DT}"
    x, v = (torch.randn(*shape, device=DEV, dtype=DT) for _ in range(2))
    tau, tau_n = torch.tensor(0.25, device=DEV), torch.tensor(0.5, device=DEV)
    if impl == "ref":
        fn = lambda: dvakern.flow_step_ref(x, v, tau, tau_n)  # noqa: E731
    elif impl == "torch_inplace":
        y = x.clone()
        fn = lambda: y.add_(v * (tau_n - tau))  # noqa: E731
    else:
        if not _triton_ok():
            pytest.skip("Triton kernels need CUDA")
        def fn():
            with dvakern.backend("triton"):
                return dvakern.flow_step(x, v, tau, tau_n)
    _run(benchmark, fn)
