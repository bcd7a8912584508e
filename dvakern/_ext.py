"""Optional compiled extension (csrc/): loaded when built, never required.

Where it comes from, first match wins:
  1. `dvakern._C`, built by setup.py during `pip install --no-build-isolation -e .` (needs torch
     importable at build time, which pip's default isolated build does not give);
  2. a JIT build in ~/.cache/dvakern (or $DVA_EXT_DIR), made by `python -m dvakern.build_ext`.
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
    return os.environ.get("DVA_EXT_DIR", os.path.join(os.path.expanduser("~"), ".cache", "dvakern"))


def _load() -> None:
    _state["tried"] = True
    if os.environ.get("DVA_NO_EXT") == "1":
        _state["error"] = "skipped (DVA_NO_EXT=1)"
        return
    try:
        from . import _C  # noqa: F401  (registers the ops on import)
        _state["loaded"] = _C.__file__
        return
    except ImportError as e:
        _state["error"] = f"dvakern._C not built ({e})"
    for lib in sorted(glob.glob(os.path.join(ext_dir(), "dvakern_ext*.so"))):
        try:
            torch.ops.load_library(lib)
            _state["loaded"], _state["error"] = lib, None
            return
        except OSError as e:  # built against another torch: rebuild with python -m dvakern.build_ext
            _state["error"] = f"{lib}: {e}"


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
