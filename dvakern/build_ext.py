"""Build the optional csrc/ extension just in time into a cache dir (no reinstall needed).

    python -m dvakern.build_ext            # CPU ops (+ the CUDA op with --cuda)

The library lands in $DVA_EXT_DIR or ~/.cache/dvakern/torch-<version>/ and is loaded by
`import dvakern` from then on (unless DVA_NO_EXT=1). Needs a C++ compiler and ninja; --cuda
also needs nvcc and a CUDA build of torch, and compiles for the local GPU's architecture only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"


def build(cuda: bool = False, verbose: bool = False) -> str:
    from torch.utils.cpp_extension import load

    from ._ext import ext_dir
    sources = [CSRC / "gn_silu_cpu.cpp"]
    if not sources[0].exists():
        raise FileNotFoundError(f"{sources[0]} not found: building needs a source checkout of dva")
    if cuda:
        if not (torch.version.cuda and torch.cuda.is_available()):
            raise RuntimeError("--cuda needs a CUDA build of torch and a visible GPU")
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        sources.append(CSRC / "ring_cache_cuda.cu")
    out = Path(ext_dir())
    out.mkdir(parents=True, exist_ok=True)
    load(name="dvakern_ext", sources=[str(s) for s in sources], build_directory=str(out), is_python_module=False,
         extra_cflags=["-O3", "-fopenmp-simd", "-fno-trapping-math"], extra_cuda_cflags=["-O3"], verbose=verbose)
    return str(out / "dvakern_ext.so")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dvakern.build_ext", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuda", action="store_true", help="also build the CUDA ring-cache op (needs nvcc + CUDA torch)")
    p.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = p.parse_args(argv)
    if os.environ.get("DVA_NO_EXT") == "1":
        print("DVA_NO_EXT=1: not building the extension", file=sys.stderr)
        return 1
    t0 = time.time()
    try:
        path = build(args.cuda, args.verbose)
    except Exception as e:
        print(f"dvakern.build_ext: build failed: {e}", file=sys.stderr)
        return 1
    print(f"built {path} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
