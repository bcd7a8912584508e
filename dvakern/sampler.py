"""Few-step flow-matching sampler update.

Flow matching here: x_tau = (1 - tau) * noise + tau * x, velocity target x - noise, tau: 0 -> 1.
One Euler step from tau to tau_next:  x <- x + (tau_next - tau) * v.
tau, tau_next are tensors (0-dim or (B,)) so a captured graph needs no host sync.
"""
from __future__ import annotations

import torch

from ._backend import use_triton


def flow_step_ref(x, v, tau, tau_next):
    dt = (tau_next - tau).to(torch.float32)
    if dt.dim() == 1:
        dt = dt.view(-1, *([1] * (x.dim() - 1)))
    return (x.float() + dt * v.float()).to(x.dtype)


def flow_step(x, v, tau, tau_next):
    if use_triton(x):
        raise NotImplementedError("triton flow_step not wired yet")
    return flow_step_ref(x, v, tau, tau_next)
