"""Error budget for kernel tests (after flash-attention's tests), shared by tests/ and anyone
checking an op: compare against an fp64 reference; the kernel's error may be at most
`factor` x the error of plain PyTorch in the same dtype, plus a small floor scaled to the output."""
from __future__ import annotations

import torch


def mismatch(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, tuple]:
    """Max abs error, max rel error and the index of the max abs error."""
    d = (out.double() - ref.double()).abs()
    if d.numel() == 0:
        return 0.0, 0.0, ()
    flat = int(d.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), d.shape))
    rel = (d / ref.double().abs().clamp_min(1e-6)).max().item()
    return d.max().item(), rel, idx


def assert_within_budget(name: str, out: torch.Tensor, plain: torch.Tensor, ref64: torch.Tensor,
                         factor: float = 2.0, floor: float = 1e-5) -> None:
    """out: the kernel's result; plain: plain PyTorch in out's dtype; ref64: the fp64 reference."""
    if out.shape != ref64.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}")
    if not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).nonzero()[:5].tolist()
        raise AssertionError(f"{name}: non-finite values at {bad}")
    err, rel, idx = mismatch(out, ref64)
    perr, _, _ = mismatch(plain, ref64)
    tol = factor * perr + floor * max(1.0, ref64.abs().max().item())
    if err > tol:
        raise AssertionError(
            f"{name}: max abs err {err:.3e} (rel {rel:.3e}) at {idx}: kernel {out[idx].item():.6g}"
            f" vs fp64 {ref64[idx].item():.6g}; budget {tol:.3e} = {factor} x plain-PyTorch err {perr:.3e} + floor")
