"""Every Triton kernel of dvakern against its reference, on CPU tensors through the Triton
interpreter (fp32, odd shapes, both GroupNorm layouts, every gradient), and on CUDA (fp32 and
bf16) when a GPU is present.

The launchers build an interpreted twin of each kernel for CPU tensors whatever the import order
and whatever TRITON_INTERPRET said when Triton was imported (dvakern/_triton.py), so this module
never sets TRITON_INTERPRET globally (on a GPU machine that would interpret every Triton kernel of
the session, inductor's included); the backend-switch tests set it with monkeypatch only.
Shapes are small: the interpreter runs each program in Python.
"""
import pytest
import torch

pytest.importorskip("triton")

import dvakern  # noqa: E402
from dvakern.conv_block import gn_silu_conv3x3_ref, gn_silu_conv3x3_triton  # noqa: E402
from dvakern.frame_attn import frame_attn_bwd_triton, frame_attn_fwd_triton, frame_attn_ref  # noqa: E402
from dvakern.gn_silu import gn_mod_silu_bwd_triton, gn_mod_silu_fwd_triton, gn_mod_silu_ref  # noqa: E402
from dvakern.ring_decode import ring_decode_attn_ref, ring_decode_triton  # noqa: E402
from dvakern.sampler import flow_step_ref, flow_step_triton  # noqa: E402
from dvakern.testing import assert_within_budget  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _dtypes(device):
    return [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])


def _floor(dtype):
    return 1e-5 if dtype == torch.float32 else 2e-2


def _d64(t):
    return None if t is None else t.detach().double()


# ------------------------------------------------------------------------------- flow_step
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_flow_step(device, per_sample, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 13, 11, generator=g)
    v = torch.randn(3, 3, 13, 11, generator=g)
    if channels_last:
        x, v = x.to(memory_format=torch.channels_last), v.to(memory_format=torch.channels_last)
    tau = torch.rand(3, generator=g) if per_sample else torch.tensor(0.25)
    tau_n = tau + 0.25
    x, v, tau, tau_n = (t.to(device) for t in (x, v, tau, tau_n))
    out = flow_step_triton(x, v, tau, tau_n)
    assert out.shape == x.shape and out.stride() == x.stride()
    assert_within_budget("flow_step", out, flow_step_ref(x, v, tau, tau_n),
                         flow_step_ref(x.double(), v.double(), tau.double(), tau_n.double()))


# ---------------------------------------------------------------------------- gn_mod_silu
GN_CASES = [(2, 40, 13, 13, 8), (1, 16, 40, 40, 4)]  # odd sizes; batch 1 with the group split over programs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", GN_CASES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mod", [False, True])
def test_gn_mod_silu_fwd_bwd(device, shape, channels_last, mod):
    B, C, H, W, G = shape
    g = torch.Generator().manual_seed(1)
    for dtype in _dtypes(device):
        x = (torch.randn(B, C, H, W, generator=g) * 2 + 3).to(device, dtype)  # offset mean: tests the shifted sums
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        w, b = (torch.randn(C, generator=g).to(device, dtype) for _ in range(2))
        s, sh = ((torch.randn(B, C, generator=g) * 0.5).to(device, dtype) for _ in range(2)) if mod else (None, None)
        dy = torch.randn(B, C, H, W, generator=g).to(device, dtype)
        y, mean, rstd = gn_mod_silu_fwd_triton(x, w, b, s, sh, G)
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last) == channels_last

        def run_ref(cast):
            ins = [None if t is None else cast(t).requires_grad_() for t in (x, w, b, s, sh)]
            out = gn_mod_silu_ref(*ins, G)
            out.backward(cast(dy))
            return out, [None if t is None else t.grad for t in ins]

        y64, g64 = run_ref(_d64)
        yp, gp = run_ref(lambda t: t.detach().clone())
        tag = f"{dtype} cl={channels_last} mod={mod}"
        assert_within_budget(f"gn fwd {tag}", y, yp, y64, floor=_floor(dtype))
        grads = gn_mod_silu_bwd_triton(dy, x, w, b, s, sh, mean, rstd, G)
        for name, got, plain, ref in zip(("dx", "dweight", "dbias", "dscale", "dshift"), grads, gp, g64):
            if ref is not None:
                assert_within_budget(f"gn {name} {tag}", got, plain, ref, floor=_floor(dtype))


# ------------------------------------------------------------------------- frame attention
# (B, H, T, N, D, window): odd sizes, D 32-128, one token per frame, sliding windows
FA_CASES = [(2, 3, 7, 5, 48, None), (1, 2, 3, 16, 32, None), (1, 1, 5, 4, 128, 2), (1, 2, 9, 1, 64, 3),
            (1, 2, 9, 4, 32, 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FA_CASES, ids=lambda s: "x".join(map(str, s)))
def test_frame_attention_fwd_bwd(device, shape):
    B, H, T, N, D, win = shape
    S = T * N
    g = torch.Generator().manual_seed(2)
    for dtype in _dtypes(device):
        # q, k, v as the model makes them: a (B, S, H, D) projection viewed as (B, H, S, D)
        q, k, v = (torch.randn(B, S, H, D, generator=g).to(device, dtype).transpose(1, 2) for _ in range(3))
        do = torch.randn(B, H, S, D, generator=g).to(device, dtype)
        o, lse = frame_attn_fwd_triton(q, k, v, N, window=win)

        def run_ref(cast):
            ins = [cast(t).requires_grad_() for t in (q, k, v)]
            out = frame_attn_ref(*ins, N, window=win)
            out.backward(cast(do))
            return out, [t.grad for t in ins]

        o64, g64 = run_ref(_d64)
        op, gp = run_ref(lambda t: t.detach().clone())
        assert_within_budget(f"frame attn fwd {dtype}", o, op, o64, floor=_floor(dtype))
        for name, got, plain, ref in zip(("dq", "dk", "dv"), frame_attn_bwd_triton(do, q, k, v, o, lse, N, window=win),
                                             gp, g64):
            assert_within_budget(f"frame attn {name} {dtype}", got, plain, ref, floor=_floor(dtype))


# ---------------------------------------------------------------------------- ring decode
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 48), (1, 2, 3, 16, 64)], ids=lambda s: "x".join(map(str, s)))
def test_ring_decode_runs_past_the_window(device, shape):
    """Step a ring cache past wrap-around: outputs, cache contents and slot positions match the reference."""
    B, H, W, N, D = shape
    g = torch.Generator().manual_seed(3)
    for dtype in _dtypes(device):
        caches = [torch.zeros(B, H, W, N, D, device=device, dtype=dtype) for _ in range(2)]
        ref_caches = [c.clone() for c in caches]
        slot, ref_slot = (torch.full((W,), -1, dtype=torch.long, device=device) for _ in range(2))
        for p in range(2 * W + 1):
            q, kn, vn = (torch.randn(B, H, N, D, generator=g).to(device, dtype) for _ in range(3))
            pos = torch.tensor(p, device=device)
            o = ring_decode_triton(q, kn, vn, *caches, slot, pos, 500.0)
            # fp64 reference on copies of the (pre-step) reference cache; plain PyTorch in dtype
            c64 = [c.double() for c in ref_caches]
            o64 = ring_decode_attn_ref(q.double(), kn.double(), vn.double(), *c64, ref_slot.clone(), pos, 500.0)
            op = ring_decode_attn_ref(q, kn, vn, *ref_caches, ref_slot, pos, 500.0)
            assert_within_budget(f"ring decode step {p} {dtype}", o, op, o64, floor=_floor(dtype))
            assert torch.equal(slot, ref_slot), f"slot_pos {slot.tolist()} != {ref_slot.tolist()} at step {p}"
            for c, rc in zip(caches, ref_caches):
                assert torch.equal(c, rc), f"cache contents differ after step {p}"


# -------------------------------------------------------------------------- fused conv block
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mod_res", [False, True])
def test_gn_silu_conv3x3(device, channels_last, mod_res):
    B, C, H, W, G, COUT = 2, 40, 9, 11, 8, 24
    g = torch.Generator().manual_seed(4)
    for dtype in _dtypes(device):
        x = torch.randn(B, C, H, W, generator=g).to(device, dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        gw, gb = (torch.randn(C, generator=g).to(device, dtype) for _ in range(2))
        s, sh = ((torch.randn(B, C, generator=g) * 0.5).to(device, dtype) for _ in range(2)) if mod_res \
            else (None, None)
        cw = (torch.randn(COUT, C, 3, 3, generator=g) * 0.05).to(device, dtype)
        cb = torch.randn(COUT, generator=g).to(device, dtype) if mod_res else None
        res = torch.randn(B, COUT, H, W, generator=g).to(device, dtype) if mod_res else None
        args = (x, gw, gb, s, sh, G, cw, cb, res)
        y = gn_silu_conv3x3_triton(*args)
        assert y.is_contiguous(memory_format=torch.channels_last)
        y64 = gn_silu_conv3x3_ref(*[a if isinstance(a, int) else _d64(a) for a in args])
        assert_within_budget(f"gn_silu_conv3x3 {dtype}", y, gn_silu_conv3x3_ref(*args), y64, floor=_floor(dtype))


# ---------------------------------------------------- public functions on the 'triton' backend
def test_public_ops_on_triton_backend_match_ref(monkeypatch):
    """The model-facing functions, switched to 'triton', agree with 'ref' (values and gradients)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 12, 32, generator=g) for _ in range(3))
    x = torch.randn(1, 16, 7, 7, generator=g)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    s, sh = torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)

    def run(name):
        with dvakern.backend(name):
            ins = [t.clone().requires_grad_() for t in (q, k, v, x, w, b, s, sh)]
            o = dvakern.frame_attention(*ins[:3], 4) + dvakern.frame_attention(*ins[:3], 4, window=2)
            y = dvakern.gn_mod_silu(*ins[3:], 4)
            (o.square().sum() + (y * y.detach().flip(-1)).sum()).backward()
            return [o, y] + [t.grad for t in ins]

    for i, (a, r) in enumerate(zip(run("triton"), run("ref"))):
        torch.testing.assert_close(a, r, atol=2e-5, rtol=2e-5, msg=lambda m: f"output/grad #{i}: {m}")


def test_flow_sample_runs_the_whole_loop_on_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x0 = torch.randn(2, 3, 8, 8)
    target = torch.randn(2, 3, 8, 8)
    taus = torch.linspace(0, 1, 5)

    def velocity(x, tau):  # exact flow towards `target`: the Euler loop must land on it
        return (target - x) / (1 - tau).clamp_min(1e-6)

    with dvakern.backend("triton"):
        out = dvakern.flow_sample(velocity, x0, taus)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)
