"""Optional compiled extension (csrc/): loaded when built, never required.

Where it comes from, first match wins:
  1. dvakern/_C.so, built by setup.py during `pip install --no-build-isolation -e .` (needs torch
     importable at build time, which pip's default isolated build does not give);
  2. a JIT build in ~/.cache/dvakern/torch-<version>/ (or $DVA_EXT_DIR), made by
     `python -m dvakern.build_ext`.
The library is loaded with torch.ops.load_library (it is not a Python module).
DVA_NO_EXT=1 skips loading (and building). Without it everything runs on Triton / the references.
The extension registers its ops in the same `dvakern` namespace (e.g. dvakern::gn_mod_silu_fwd_cpu
for the CPU dispatch key).
"""
from __future__ import annotations

import glob
import os

import torch

_state = {"loaded": None, "error": None, "tried": False}


def ext_dir() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "dvakern", f"torch-{torch.__version__}")
    return os.environ.get("DVA_EXT_DIR", default)


def _load() -> None:
    _state["tried"] = True
    if os.environ.get("DVA_NO_EXT") == "1":
        _state["error"] = "skipped (DVA_NO_EXT=1)"
        return
    here = os.path.dirname(os.path.abspath(__file__))
    libs = sorted(glob.glob(os.path.join(here, "_C*.so"))) + sorted(glob.glob(os.path.join(ext_dir(), "dvakern_ext*.so")))
    _state["error"] = "not built (python -m dvakern.build_ext)"
    for lib in libs:
        try:
            torch.ops.load_library(lib)
        except OSError as e:  # built against another torch: rebuild with python -m dvakern.build_ext
            _state["error"] = f"{lib}: {e}"
            continue
        _state["loaded"], _state["error"] = lib, None
        _register_fakes()
        return


def _register_fakes() -> None:
    """Fake (meta) implementations so torch.compile / opcheck can trace the C++ ops."""
    if hasattr(torch.ops.dvakern, "gn_mod_silu_fwd_cpu"):
        @torch.library.register_fake("dvakern::gn_mod_silu_fwd_cpu")
        def _(x, weight, bias, scale, shift, num_groups, eps):
            B = x.shape[0]
            y = torch.empty_like(x)
            return y, x.new_empty(B, num_groups), x.new_empty(B, num_groups)


def has(op: str) -> bool:
    """Whether the compiled extension provides torch.ops.dvakern.<op>."""
    if not _state["tried"]:
        _load()
    if _state["loaded"] is None:
        return False
    return hasattr(torch.ops.dvakern, op)


def info() -> dict:
    """Which backends and extensions are active, e.g. for a log line or `python -m dvakern`."""
    from ._backend import get_backend, triton_available
    has("")  # trigger the load
    ext_ops = sorted(n for n in ("gn_mod_silu_fwd_cpu", "ring_append_cuda") if _state["loaded"] and
                     hasattr(torch.ops.dvakern, n))
    return {
        "backend": get_backend(),
        "triton": triton_available(),
        "cuda": torch.cuda.is_available(),
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "extension": _state["loaded"] or f"none: {_state['error']}",
        "extension_ops": ext_ops,
    }
