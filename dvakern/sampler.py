"""Few-step flow-matching sampler: the Euler update as one fused op, and the whole loop.

Flow matching here: x_tau = (1 - tau) * noise + tau * x, velocity target x - noise, tau: 0 -> 1.
One Euler step from tau to tau_next:  x <- x + (tau_next - tau) * v.
tau, tau_next are tensors (0-dim or (B,)) so a captured graph needs no host sync.
`flow_sample` runs the whole few-step loop with the schedule as a device tensor: no `.item()`,
no host synchronisation, so it can sit inside a CUDA graph / torch.compile region.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._backend import compute, use_triton
from ._triton import cdiv, jit, kernel, tl, triton_op


def flow_step_ref(x, v, tau, tau_next):
    dt = compute(tau_next - tau)
    if dt.dim() == 1:
        dt = dt.view(-1, *([1] * (x.dim() - 1)))
    return (compute(x) + dt * compute(v)).to(x.dtype)


@jit
def _flow_step_kernel(x_ptr, v_ptr, tau_ptr, taun_ptr, out_ptr, F, tau_stride, BLOCK: tl.constexpr):
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < F
    dt = tl.load(taun_ptr + b * tau_stride).to(tl.float32) - tl.load(tau_ptr + b * tau_stride).to(tl.float32)
    base = b.to(tl.int64) * F
    x = tl.load(x_ptr + base + offs, mask=m).to(tl.float32)
    v = tl.load(v_ptr + base + offs, mask=m).to(tl.float32)
    tl.store(out_ptr + base + offs, (x + dt * v).to(out_ptr.dtype.element_ty), mask=m)


def _dense(t):
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def flow_step_triton(x, v, tau, tau_next):
    """Launcher: x, v (B, ...) with identical dense strides (any memory format); tau (,) or (B,)."""
    if x.shape != v.shape:
        raise ValueError(f"flow_step: x {tuple(x.shape)} and v {tuple(v.shape)} differ")
    B = x.shape[0]
    F = x.numel() // max(B, 1)
    # Elementwise in memory order: fine for NCHW or channels_last as long as x and v agree and the
    # batch dim is outermost; anything else is made contiguous first.
    if x.stride() != v.stride() or x.stride(0) != F or not _dense(x):
        x, v = x.contiguous(), v.contiguous()
    out = torch.empty_like(x)
    for name, t in (("tau", tau), ("tau_next", tau_next)):
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != B):
            raise ValueError(f"flow_step: {name} must be 0-dim or ({B},), got {tuple(t.shape)}")
    tau, tau_next = torch.broadcast_tensors(tau, tau_next)
    tau, tau_next = tau.contiguous(), tau_next.contiguous()
    ts = 1 if tau.dim() == 1 else 0
    BLOCK = 1024
    kernel(_flow_step_kernel, x)[(cdiv(F, BLOCK), B)](x, v, tau, tau_next, out, F, ts, BLOCK=BLOCK)
    return out


@triton_op("dvakern::flow_step", mutates_args=())
def _flow_step_op(x: torch.Tensor, v: torch.Tensor, tau: torch.Tensor, tau_next: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cuda" or use_triton(x):
        return flow_step_triton(x, v, tau, tau_next)
    return flow_step_ref(x, v, tau, tau_next)


def _flow_step_setup(ctx, inputs, output):
    x, v, tau, tau_next = inputs
    ctx.save_for_backward(tau, tau_next)
    ctx.x_dtype, ctx.v_dtype, ctx.x_dim = x.dtype, v.dtype, x.dim()


def _flow_step_bwd(ctx, g):
    tau, tau_next = ctx.saved_tensors
    dt = compute(tau_next - tau)
    if dt.dim() == 1:
        dt = dt.view(-1, *([1] * (ctx.x_dim - 1)))
    return g.to(ctx.x_dtype), (compute(g) * dt).to(ctx.v_dtype), None, None


_flow_step_op.register_autograd(_flow_step_bwd, setup_context=_flow_step_setup)


def flow_step(x, v, tau, tau_next):
    if use_triton(x):
        return _flow_step_op(x, v, tau, tau_next)
    return flow_step_ref(x, v, tau, tau_next)


def flow_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                taus: torch.Tensor) -> torch.Tensor:
    """Whole few-step Euler loop without host sync.

    velocity(x, tau) -> v, with tau a 0-dim tensor; x: the starting noise (tau = taus[0]);
    taus: (steps + 1,) schedule on x's device (e.g. torch.linspace(0, 1, steps + 1)).
    The loop length comes from taus' shape (host metadata), never from its values.
    """
    if taus.dim() != 1 or taus.shape[0] < 2:
        raise ValueError(f"flow_sample: taus must be (steps + 1,) with steps >= 1, got {tuple(taus.shape)}")
    for i in range(taus.shape[0] - 1):
        x = flow_step(x, velocity(x, taus[i]), taus[i], taus[i + 1])
    return x
