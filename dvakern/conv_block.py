"""Fused U-Net conv block: GroupNorm-modulation-SiLU as the prologue of a 3x3 convolution, bias and
residual add in its epilogue.

    y = conv3x3(silu((GN(x) * gn_weight + gn_bias) * (1 + scale) + shift), padding=1) + conv_bias + residual

x: (B, Cin, H, W) (channels_last preferred); conv_weight: (Cout, Cin, 3, 3); conv_bias: (Cout,) or
None; residual: (B, Cout, H, W) or None; scale, shift: (B, Cin) or None. Output channels_last.

Triton path (inference): the GroupNorm statistics come from the stats kernel of gn_silu.py, then
one implicit-GEMM kernel (M = B*H*W output pixels, N = Cout, K = 9 taps x Cin) normalises,
modulates and activates each input tile as it loads it (zero padding is applied after the
activation, as the unfused conv sees it), so the activated tensor never goes to memory.
Training (anything that needs gradients) takes the unfused path: gn_mod_silu (with its own
backward) + F.conv2d.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._backend import compute, get_backend, use_triton
from ._triton import cdiv, dot_precision, jit, kernel, next_pow2, tl, triton_op
from .gn_silu import _check as _check_gn
from .gn_silu import gn_mod_silu, gn_mod_silu_ref, gn_stats_triton

# Whether backend 'auto' uses the fused kernel on CUDA. Off until an H100 measurement shows it
# beats cuDNN conv + the separate gn_mod_silu kernel at the model's shapes (unmeasured so far:
# no GPU in the session that wrote it; see docs/kernels.md). Backend 'triton' always fuses.
FUSED_ON_AUTO = False


def gn_silu_conv3x3_ref(x, gn_weight, gn_bias, scale, shift, num_groups: int, conv_weight, conv_bias=None,
                        residual=None, eps: float = 1e-5):
    h = gn_mod_silu_ref(x, gn_weight, gn_bias, scale, shift, num_groups, eps)
    y = F.conv2d(compute(h), compute(conv_weight), None if conv_bias is None else compute(conv_bias), padding=1)
    if residual is not None:
        y = y + compute(residual)
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


def _check(x, gn_weight, gn_bias, scale, shift, num_groups, conv_weight, conv_bias, residual):
    _check_gn(x, gn_weight, gn_bias, scale, shift, num_groups)
    if x.dim() != 4 or conv_weight.dim() != 4 or conv_weight.shape[2:] != (3, 3) or conv_weight.shape[1] != x.shape[1]:
        raise ValueError(f"gn_silu_conv3x3: need x (B, Cin, H, W) and conv_weight (Cout, Cin, 3, 3); got "
                         f"{tuple(x.shape)} and {tuple(conv_weight.shape)}")
    B, _, H, W = x.shape
    Cout = conv_weight.shape[0]
    if conv_bias is not None and conv_bias.shape != (Cout,):
        raise ValueError(f"gn_silu_conv3x3: conv_bias must be ({Cout},), got {tuple(conv_bias.shape)}")
    if residual is not None and residual.shape != (B, Cout, H, W):
        raise ValueError(f"gn_silu_conv3x3: residual must be {(B, Cout, H, W)}, got {tuple(residual.shape)}")


@jit
def _gn_conv_kernel(X, MEAN, RSTD, GW, GB, SCALE, SHIFT, WT, CB, RES, Y,
                    B, H, W, CIN, COUT, G, CG, sxb, sxc, sxh, sxw, srb, src, srh, srw,
                    HAS_MOD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    DOT_PREC: tl.constexpr):
    # grid (cdiv(B*H*W, BLOCK_M), cdiv(COUT, BLOCK_N)); WT is (9 * CIN, COUT) contiguous; Y channels_last
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    M = B * H * W
    mm = offs_m < M
    nm = offs_n < COUT
    b = offs_m // (H * W)
    oh = (offs_m // W) % H
    ow = offs_m % W
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for tap in range(9):
        ih = oh + tap // 3 - 1
        iw = ow + tap % 3 - 1
        inb = mm & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        row = b.to(tl.int64) * sxb + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
        for c0 in range(0, CIN, BLOCK_K):
            cc = c0 + tl.arange(0, BLOCK_K)
            cm = cc < CIN
            lm = inb[:, None] & cm[None, :]
            xv = tl.load(X + row[:, None] + cc[None, :].to(tl.int64) * sxc, mask=lm, other=0.0).to(tl.float32)
            # prologue: GroupNorm (precomputed stats) * affine, modulation, SiLU
            sidx = b[:, None] * G + (cc // CG)[None, :]
            mean = tl.load(MEAN + sidx, mask=lm, other=0.0)
            rstd = tl.load(RSTD + sidx, mask=lm, other=0.0)
            gw = tl.load(GW + cc, mask=cm, other=0.0).to(tl.float32)
            gb = tl.load(GB + cc, mask=cm, other=0.0).to(tl.float32)
            a = (xv - mean) * rstd * gw[None, :] + gb[None, :]
            if HAS_MOD:
                midx = b[:, None] * CIN + cc[None, :]
                a = a * (1.0 + tl.load(SCALE + midx, mask=lm, other=0.0).to(tl.float32)) + \
                    tl.load(SHIFT + midx, mask=lm, other=0.0).to(tl.float32)
            hv = tl.where(lm, a / (1.0 + tl.exp(-a)), 0.0)  # zero padding lives after the activation
            wv = tl.load(WT + (tap * CIN + cc)[:, None] * COUT + offs_n[None, :], mask=cm[:, None] & nm[None, :],
                         other=0.0)
            acc += tl.dot(hv.to(wv.dtype), wv, input_precision=DOT_PREC)
    if HAS_BIAS:
        acc += tl.load(CB + offs_n, mask=nm, other=0.0).to(tl.float32)[None, :]
    om = mm[:, None] & nm[None, :]
    if HAS_RES:
        rrow = b.to(tl.int64) * srb + oh.to(tl.int64) * srh + ow.to(tl.int64) * srw
        acc += tl.load(RES + rrow[:, None] + offs_n[None, :].to(tl.int64) * src, mask=om, other=0.0).to(tl.float32)
    tl.store(Y + offs_m[:, None].to(tl.int64) * COUT + offs_n[None, :], acc.to(Y.dtype.element_ty), mask=om)


def gn_silu_conv3x3_triton(x, gn_weight, gn_bias, scale, shift, num_groups: int, conv_weight, conv_bias=None,
                           residual=None, eps: float = 1e-5, packed_weight=None):
    """Launcher (inference). packed_weight: conv_weight as (9 * Cin, Cout) (pack_conv_weight), to
    skip the per-call repack."""
    _check(x, gn_weight, gn_bias, scale, shift, num_groups, conv_weight, conv_bias, residual)
    B, CIN, H, W = x.shape
    COUT = conv_weight.shape[0]
    mean, rstd = gn_stats_triton(x, num_groups, eps)
    wt = pack_conv_weight(conv_weight) if packed_weight is None else packed_weight
    y = torch.empty(B, COUT, H, W, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    has_mod, has_bias, has_res = scale is not None, conv_bias is not None, residual is not None
    scale_, shift_ = (scale.contiguous(), shift.contiguous()) if has_mod else (mean, mean)  # dummies unread
    cb = conv_bias if has_bias else mean
    res = residual if has_res else y
    BLOCK_M = 64
    BLOCK_N = max(16, min(64, next_pow2(COUT)))
    BLOCK_K = max(16, min(32, next_pow2(CIN)))
    grid = (cdiv(B * H * W, BLOCK_M), cdiv(COUT, BLOCK_N))
    kernel(_gn_conv_kernel, x)[grid](x, mean, rstd, gn_weight, gn_bias, scale_, shift_, wt, cb, res, y,
                                     B, H, W, CIN, COUT, num_groups, CIN // num_groups,
                                     x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                                     res.stride(0), res.stride(1), res.stride(2), res.stride(3),
                                     HAS_MOD=has_mod, HAS_BIAS=has_bias, HAS_RES=has_res,
                                     BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                                     DOT_PREC=dot_precision(x.dtype))
    return y


def pack_conv_weight(conv_weight):
    """(Cout, Cin, 3, 3) -> (9 * Cin, Cout): the implicit GEMM's K x N operand, tap-major."""
    cout, cin = conv_weight.shape[:2]
    return conv_weight.permute(2, 3, 1, 0).reshape(9 * cin, cout).contiguous()


@triton_op("dvakern::gn_silu_conv3x3", mutates_args=())
def _gn_conv_op(x: torch.Tensor, gn_weight: torch.Tensor, gn_bias: torch.Tensor, scale: Optional[torch.Tensor],
                shift: Optional[torch.Tensor], num_groups: int, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                residual: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    if x.device.type == "cuda" or use_triton(x):
        return gn_silu_conv3x3_triton(x, gn_weight, gn_bias, scale, shift, num_groups, conv_weight, conv_bias,
                                      residual, eps)
    return gn_silu_conv3x3_ref(x, gn_weight, gn_bias, scale, shift, num_groups, conv_weight, conv_bias, residual, eps)


def gn_silu_conv3x3(x, gn_weight, gn_bias, scale, shift, num_groups: int, conv_weight, conv_bias=None,
                    residual=None, eps: float = 1e-5):
    """The model's entry point: fused on the Triton path for inference, unfused (autograd-able) otherwise."""
    _check(x, gn_weight, gn_bias, scale, shift, num_groups, conv_weight, conv_bias, residual)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, gn_weight, gn_bias, scale, shift, conv_weight, conv_bias,
                                                    residual))
    fuse = use_triton(x) and (get_backend() == "triton" or FUSED_ON_AUTO)
    if fuse and not needs_grad:
        return _gn_conv_op(x, gn_weight, gn_bias, scale, shift, num_groups, conv_weight, conv_bias, residual, eps)
    h = gn_mod_silu(x, gn_weight, gn_bias, scale, shift, num_groups, eps)
    y = F.conv2d(h, conv_weight, conv_bias, padding=1)
    return y if residual is None else y + residual
