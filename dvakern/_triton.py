"""Launch plumbing shared by the Triton ops: pick the compiled kernel (CUDA) or the interpreter (CPU).

Triton 3.x decides "compiled or interpreted" when `@triton.jit` runs, i.e. when the kernel's
module is imported, from TRITON_INTERPRET. Tests must not depend on import order, so a launcher
never uses the decorated object directly on CPU tensors: `kernel(k, t)` returns an interpreted
twin of the kernel for CPU tensors (built once from the Python source) and, for CUDA tensors,
the kernel wrapped by `torch.library.wrap_triton` so `torch.compile` traces into it.
Triton's own standard library (tl.zeros, tl.sum, tl.max, ...) is made of @triton.jit functions
too, decided the same way at import; while an interpreted twin runs, `_interpreted_stdlib` swaps
them for interpreted twins (and puts them back after), which is what importing Triton under
TRITON_INTERPRET=1 would have given. Kernels must not call other dvakern @triton.jit functions
(those would stay compiled); shared math is written inline.
"""
from __future__ import annotations

import contextlib
import functools
import types

import torch

try:
    import triton
    import triton.language as tl  # noqa: F401  (re-exported for the kernel modules)
    from triton.runtime.interpreter import InterpretedFunction
    HAVE_TRITON = True
except Exception:  # no triton (or a broken install): the ops fall back to their references
    triton = None
    tl = None
    InterpretedFunction = None
    HAVE_TRITON = False


def triton_op(name: str, mutates_args):
    """`torch.library.triton_op` when Triton imports; otherwise the same op as a plain
    `custom_op` (same schema, fake and autograd registrations; it only ever runs the reference).
    Why: without Triton, torch's triton_op logs "Triton not available" once per op at import,
    four warnings before any CLI had done anything."""
    if HAVE_TRITON:
        return torch.library.triton_op(name, mutates_args=mutates_args)

    def register(fn):
        op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        op.register_fake(fn)  # as triton_op does: its body on fake tensors (the reference path) is the fake
        return op

    return register


def jit(fn):
    """`triton.jit` when Triton imports; otherwise the plain function (never launched)."""
    return triton.jit(fn) if HAVE_TRITON else fn


@functools.lru_cache(maxsize=None)
def _twin(k):
    return InterpretedFunction(k.fn)


@contextlib.contextmanager
def _interpreted_stdlib():
    from triton.runtime.jit import JITFunction
    try:  # gluon is imported lazily by the launcher and asserts the stdlib is compiled: import it first
        import triton.experimental.gluon  # noqa: F401
    except Exception:
        pass
    swapped = []
    for mod in (tl, getattr(tl, "standard", None), getattr(tl, "random", None)):
        if not isinstance(mod, types.ModuleType):
            continue
        for name, val in list(vars(mod).items()):
            if isinstance(val, JITFunction):
                swapped.append((mod, name, val))
                setattr(mod, name, _twin(val))
    try:
        yield
    finally:
        for mod, name, val in swapped:
            setattr(mod, name, val)


class _Interpreted:
    """`k[grid](*args)` for CPU tensors through the Triton interpreter, import-order independent."""

    def __init__(self, k):
        self.k = k if isinstance(k, InterpretedFunction) else _twin(k)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _interpreted_stdlib():
                return self.k[grid](*args, **kwargs)
        return launch


def kernel(k, t: torch.Tensor):
    """The launchable form of Triton kernel `k` for tensors on `t`'s device."""
    if not HAVE_TRITON:
        raise RuntimeError("dvakern: Triton is not installed; use backend 'ref'")
    if t.device.type == "cuda":
        if isinstance(k, InterpretedFunction):  # imported under TRITON_INTERPRET=1 but CUDA tensors
            return k
        return torch.library.wrap_triton(k)
    if t.device.type != "cpu":
        raise RuntimeError(f"dvakern: no Triton path for device {t.device}")
    return _Interpreted(k)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: true fp32 ("ieee") for fp32 tensors, so fp32 kernels meet the fp32
    error budget (Triton's default for fp32 dots on NVIDIA is TF32); "tf32" otherwise (bf16/fp16
    operands ignore it, and fp32 intermediates of bf16 inputs do not need more than TF32)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
