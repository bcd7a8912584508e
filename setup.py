"""Optional compiled extension of dvakern (csrc/), built by `pip install -e .` when it can be.

Project metadata lives in pyproject.toml; this file only adds the extension:
  * C++ CPU ops (always, when torch is importable at build time and a C++ compiler works);
  * the CUDA ring-cache op, only when torch is a CUDA build, a CUDA toolkit (nvcc) is found and a
    GPU is visible: compiled for that GPU's architecture only (or $TORCH_CUDA_ARCH_LIST if set).
DVA_NO_EXT=1 skips the extension. pip's default isolated build has no torch, so the README's
`pip install torch==2.13.0 -e ".[test]"` installs the package without the extension (and never
pulls a torch of its own). The README installs with `--no-build-isolation`, which builds it;
`python -m dvakern.build_ext` builds it later (JIT, cached in ~/.cache/dvakern). dvakern works
without it.
"""
import os
import sys

from setuptools import setup


def _extensions():
    if os.environ.get("DVA_NO_EXT") == "1":
        print("dvakern: DVA_NO_EXT=1, skipping the csrc extension", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as e:  # isolated build env without torch: pure-Python install
        print(f"dvakern: torch not importable at build time ({e}); skipping the csrc extension "
              "(build it later with `python -m dvakern.build_ext`)", file=sys.stderr)
        return [], {}
    sources = ["csrc/gn_silu_cpu.cpp"]
    kw = dict(extra_compile_args={"cxx": ["-O3", "-fopenmp-simd", "-fno-trapping-math"]},
              optional=True)  # a failed compile leaves a working pure-Python install
    cuda = bool(torch.version.cuda) and CUDA_HOME is not None and torch.cuda.is_available()
    if cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # the local GPU only
        sources.append("csrc/ring_cache_cuda.cu")
        kw["extra_compile_args"]["nvcc"] = ["-O3"]
        ext = CUDAExtension("dvakern._C", sources, **kw)
    else:
        ext = CppExtension("dvakern._C", sources, **kw)
    print(f"dvakern: building csrc extension ({'CPU + CUDA' if cuda else 'CPU only'})", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
