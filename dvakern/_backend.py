"""The one backend switch every dvakern op goes through: 'ref' | 'triton' | 'auto'.

'ref'    plain PyTorch (the *_ref functions beside each kernel); runs anywhere.
'triton' the Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1 for tests).
'auto'   triton on CUDA tensors when Triton imports, ref otherwise.
"""
from __future__ import annotations

import contextlib
import os

import torch

BACKENDS = ("ref", "triton", "auto")
_backend = os.environ.get("DVA_BACKEND", "auto")


def set_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown dvakern backend {name!r}; choose one of {BACKENDS}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str):
    """Temporarily switch backend: `with dvakern.backend('ref'): ...`."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def triton_available() -> bool:
    # decided once at import (dvakern._triton): no import statement in the per-step path, which
    # torch.compile would otherwise have to trace
    from ._triton import HAVE_TRITON
    return HAVE_TRITON


def compute(t):
    """The dtype references compute in: fp32 for fp32 and narrower inputs, fp64 for fp64 (so fp64
    references and gradcheck are real fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t) -> bool:
    """Whether an op on tensor `t` runs its Triton kernel under the current backend."""
    if _backend == "ref":
        return False
    if _backend == "triton":
        if t.device.type != "cuda" and not interpreting():
            raise RuntimeError("dvakern backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
        return True
    return t.device.type == "cuda" and triton_available()
