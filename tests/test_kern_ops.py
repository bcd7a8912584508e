"""dvakern's registered ops: torch.library.opcheck (schema, fake, autograd registration, AOT
dispatch) through their CPU implementations, fp64 gradcheck of the custom backward formulas,
the backend switch, and (on CUDA) torch.compile(fullgraph=True) without graph breaks."""
import math

import pytest
import torch

import dvakern
from dvakern import _ext

OPS = torch.ops.dvakern


def _gn_inputs(dtype=torch.float32, channels_last=False, mod=True, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 12, 5, 7, generator=g, dtype=dtype) * 2 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.randn(12, generator=g, dtype=dtype), torch.randn(12, generator=g, dtype=dtype)
    s, sh = (torch.randn(2, 12, generator=g, dtype=dtype), torch.randn(2, 12, generator=g, dtype=dtype)) if mod \
        else (None, None)
    ts = [t if t is None else t.requires_grad_(requires_grad) for t in (x, w, b, s, sh)]
    return ts


def _qkv(dtype=torch.float32, requires_grad=False, S=12, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, S, D, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)]


# ------------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mod", [False, True])
def test_opcheck_gn_mod_silu(channels_last, mod):
    x, w, b, s, sh = _gn_inputs(channels_last=channels_last, mod=mod, requires_grad=True)
    torch.library.opcheck(OPS.gn_mod_silu_fwd.default, (x, w, b, s, sh, 3, 1e-5))
    with torch.no_grad():
        _, mean, rstd = OPS.gn_mod_silu_fwd(x, w, b, s, sh, 3, 1e-5)
    s, sh = (None, None) if s is None else (s.detach(), sh.detach())
    torch.library.opcheck(OPS.gn_mod_silu_bwd.default, (torch.randn_like(x), x.detach(), w.detach(), b.detach(),
                                                        s, sh, mean, rstd, 3))


def test_opcheck_frame_attention():
    q, k, v = _qkv(requires_grad=True)
    torch.library.opcheck(OPS.frame_attn_fwd.default, (q, k, v, 4, 0.3, 0))
    with torch.no_grad():
        o, lse = OPS.frame_attn_fwd(q, k, v, 4, 0.3, 2)
    torch.library.opcheck(OPS.frame_attn_bwd.default, (torch.randn_like(o), q.detach(), k.detach(), v.detach(),
                                                       o, lse, 4, 0.3, 2))


def test_opcheck_ring_decode():
    B, H, W, N, D = 1, 2, 3, 4, 8
    q, kn, vn = (torch.randn(B, H, N, D) for _ in range(3))
    kc, vc = torch.randn(B, H, W, N, D), torch.randn(B, H, W, N, D)
    slot = torch.tensor([4, 2, 3])
    torch.library.opcheck(OPS.ring_decode.default, (q, kn, vn, kc, vc, slot, torch.tensor(5), 10000.0, 0.3))


def test_opcheck_flow_step_and_conv_block():
    x, v = torch.randn(2, 3, 5, 5, requires_grad=True), torch.randn(2, 3, 5, 5, requires_grad=True)
    torch.library.opcheck(OPS.flow_step.default, (x, v, torch.tensor([0.0, 0.5]), torch.tensor([0.25, 0.75])))
    xg, w, b, s, sh = _gn_inputs()
    cw, cb, res = torch.randn(5, 12, 3, 3), torch.randn(5), torch.randn(2, 5, 5, 7)
    torch.library.opcheck(OPS.gn_silu_conv3x3.default, (xg, w, b, s, sh, 3, cw, cb, res, 1e-5),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


# ------------------------------------------------------------------------------ gradcheck
def test_gradcheck_frame_attention_fp64():
    q, k, v = _qkv(dtype=torch.float64, requires_grad=True, S=6, D=4)
    for window in (0, 2):  # unlimited, and the last 2 frames
        assert torch.autograd.gradcheck(lambda a, b_, c: OPS.frame_attn_fwd(a, b_, c, 2, 0.5, window)[0], (q, k, v))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mod", [False, True])
def test_gradcheck_gn_mod_silu_fp64(channels_last, mod):
    ins = _gn_inputs(dtype=torch.float64, channels_last=channels_last, mod=mod, requires_grad=True)
    x, w, b, s, sh = ins
    x.data = x.data[:1, :, :3, :4].clone()  # keep the numerical Jacobian small
    if mod:
        s.data, sh.data = s.data[:1].clone(), sh.data[:1].clone()
    diff = [t for t in ins if t is not None]
    assert torch.autograd.gradcheck(lambda *a: OPS.gn_mod_silu_fwd(*(list(a) + [None] * (5 - len(a))), 3, 1e-5)[0],
                                    diff)


def test_gradcheck_flow_step_fp64():
    x, v = (torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    tau, taun = torch.tensor([0.0, 0.5], dtype=torch.float64), torch.tensor([0.25, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: OPS.flow_step(a, b, tau, taun), (x, v))


def test_registered_cpu_paths_match_references():
    """The ops' CPU implementations (what 'auto' and opcheck run on CPU) agree with the *_ref functions."""
    x, w, b, s, sh = _gn_inputs(channels_last=True)
    y, mean, rstd = OPS.gn_mod_silu_fwd(x, w, b, s, sh, 3, 1e-5)
    torch.testing.assert_close(y, dvakern.gn_mod_silu_ref(x, w, b, s, sh, 3))
    var, m = torch.var_mean(x.reshape(2, 3, -1), -1, unbiased=False)
    torch.testing.assert_close(mean, m)
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5))
    q, k, v = _qkv()
    torch.testing.assert_close(OPS.frame_attn_fwd(q, k, v, 4, 1 / math.sqrt(8), 0)[0], dvakern.frame_attn_ref(q, k, v, 4))
    torch.testing.assert_close(OPS.frame_attn_fwd(q, k, v, 4, 1 / math.sqrt(8), 2)[0],
                               dvakern.frame_attn_ref(q, k, v, 4, window=2))


# ----------------------------------------------------------------------- backend switch
def test_backend_switch_rejects_unknown_and_restores():
    with pytest.raises(ValueError, match="unknown dvakern backend 'cuda'"):
        dvakern.set_backend("cuda")
    before = dvakern.get_backend()
    with dvakern.backend("ref"):
        assert dvakern.get_backend() == "ref"
    assert dvakern.get_backend() == before


def test_triton_backend_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with dvakern.backend("triton"), pytest.raises(RuntimeError, match="needs CUDA tensors"):
        dvakern.flow_step(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.0), torch.tensor(1.0))


def test_bad_inputs_name_the_argument():
    q, k, v = _qkv()
    with dvakern.backend("auto"), pytest.raises(ValueError, match="tokens_per_frame=5"):
        dvakern.frame_attention(q, k, v, 5)
    x, w, b, s, sh = _gn_inputs()
    with pytest.raises(ValueError, match="not divisible by num_groups=5"):
        dvakern.gn_silu_conv3x3(x, w, b, s, sh, 5, torch.randn(4, 12, 3, 3))


def test_without_triton_the_ops_register_quietly_and_still_work():
    """A machine without Triton (a CPU install): every op is a plain custom op running its
    reference, still opcheck-clean, and importing the CLIs prints nothing (torch's triton_op logged
    "Triton not available" once per op)."""
    import subprocess
    import sys

    code = """
import sys; sys.modules["triton"] = None
import torch, dvakern, dva.control
assert not dvakern.info()["triton"]
x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
torch.library.opcheck(torch.ops.dvakern.flow_step, (x, v, torch.tensor(0.25), torch.tensor(0.5)))
torch.testing.assert_close(dvakern.flow_step(x, v, torch.tensor(0.25), torch.tensor(0.5)), x + 0.25 * v)
from dva.model.config import preset
from dva.model.dva import DVA
DVA(preset("tiny"))(torch.rand(1, 3, 3, 96, 96) * 2 - 1, torch.rand(1, 3, 2) * 512).backward()  # every op, with autograd
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert r.stderr == "", f"noise on stderr without Triton:\n{r.stderr[-2000:]}"


def test_info_reports_backends_and_extension():
    info = dvakern.info()
    assert info["backend"] in dvakern.BACKENDS
    assert isinstance(info["extension"], str) and info["extension"]
    assert set(info["extension_ops"]) <= {"gn_mod_silu_fwd_cpu", "ring_append_cuda"}


@pytest.mark.skipif(not _ext.has("gn_mod_silu_fwd_cpu"), reason="csrc extension not built (python -m dvakern.build_ext)")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mod", [False, True])
def test_csrc_gn_mod_silu_cpu(channels_last, mod):
    x, w, b, s, sh = _gn_inputs(channels_last=channels_last, mod=mod)
    x = torch.cat([x, x * 3 + 7])  # more samples, offset means
    if mod:
        s, sh = torch.cat([s, s]), torch.cat([sh, sh])
    y, mean, rstd = OPS.gn_mod_silu_fwd_cpu(x, w, b, s, sh, 3, 1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(y, dvakern.gn_mod_silu_ref(x, w, b, s, sh, 3), atol=2e-6, rtol=2e-5)
    torch.library.opcheck(OPS.gn_mod_silu_fwd_cpu.default, (x, w, b, s, sh, 3, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_compile_fullgraph_no_graph_breaks_cuda():
    """One decode step of ops on the triton backend compiles as a single graph."""
    dev = "cuda"
    B, H, W, N, D = 2, 4, 8, 4, 64
    kc, vc = torch.zeros(B, H, W, N, D, device=dev), torch.zeros(B, H, W, N, D, device=dev)
    slot = torch.full((W,), -1, dtype=torch.long, device=dev)
    x = torch.randn(B, 32, 12, 12, device=dev).to(memory_format=torch.channels_last)
    w, b = torch.randn(32, device=dev), torch.randn(32, device=dev)

    def step(q, pos, x, tau, tau_n):
        o = dvakern.ring_decode_attention(q, q, q, kc, vc, slot, pos)
        h = dvakern.gn_mod_silu(x, w, b, None, None, 8)
        a = dvakern.frame_attention(q, q, q, N)
        return o + a, dvakern.flow_step(x, h, tau, tau_n)

    with dvakern.backend("triton"):
        compiled = torch.compile(step, fullgraph=True)
        q = torch.randn(B, H, N, D, device=dev)
        tau, tau_n = torch.tensor(0.0, device=dev), torch.tensor(0.5, device=dev)
        out = compiled(q, torch.tensor(0, device=dev), x, tau, tau_n)
        kc.zero_(), vc.zero_(), slot.fill_(-1)
        ref = step(q, torch.tensor(0, device=dev), x, tau, tau_n)
    for a, r in zip(out, ref):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_opcheck_cuda():
    q, k, v = (t.cuda() for t in _qkv(requires_grad=False))
    for t in (q, k, v):
        t.requires_grad_()
    torch.library.opcheck(OPS.frame_attn_fwd.default, (q, k, v, 4, 0.3, 2))
    x, w, b, s, sh = (t.cuda() for t in _gn_inputs(channels_last=True))
    x.requires_grad_()
    torch.library.opcheck(OPS.gn_mod_silu_fwd.default, (x, w, b, s, sh, 3, 1e-5))
