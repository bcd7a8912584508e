"""Block-causal frame attention (training / prefill), forward and backward.

q, k, v: (B, H, S, D) with S = T * N tokens laid out frame-major (N tokens per frame).
Token i attends to token j iff frame(j) <= frame(i): full attention inside a frame, causal
across frames; with `window` = W, also frame(j) > frame(i) - W (the last W frames, the same
window the ring KV cache holds at decode time). RoPE, if any, is applied by the caller.

Triton path: flash-attention style (online softmax, fp32 accumulators, log-sum-exp saved for
the backward). A query tile only visits keys up to the end of its last row's frame, so the work
is the block-causal half of the square, not all of it. Backward: one kernel for dK/dV (each
key tile visits queries from its own frame on) and one for dQ, with delta = rowsum(dO * O).
"""
from __future__ import annotations

import math

import torch

from ._backend import compute, use_triton
from ._triton import cdiv, dot_precision, jit, kernel, next_pow2, tl, triton_op

_LOG2E = 1.4426950408889634


def _resolve(q, k, v, tokens_per_frame, scale, window=None):  # window: validated by frame_attention
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"frame_attention: q, k, v must all be (B, H, S, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    S, D = q.shape[-2], q.shape[-1]
    if tokens_per_frame < 1 or S % tokens_per_frame:
        raise ValueError(f"sequence length {S} is not a multiple of tokens_per_frame={tokens_per_frame}")
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def _win(window, S, tokens_per_frame):
    """The window in frames as the kernels take it (None/<=0: unlimited = every frame)."""
    T = S // tokens_per_frame
    return T if window is None or window <= 0 else min(int(window), T)


def frame_attn_ref(q, k, v, tokens_per_frame: int, scale: float | None = None, window: int | None = None):
    """Plain PyTorch reference, computed in fp32 (fp64 for fp64 inputs), returned in q.dtype."""
    S, D = q.shape[-2], q.shape[-1]
    if S % tokens_per_frame:
        raise ValueError(f"sequence length {S} is not a multiple of tokens_per_frame={tokens_per_frame}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    f = torch.arange(S, device=q.device) // tokens_per_frame
    mask = f[None, :] <= f[:, None]  # (S, S): query frame >= key frame
    if window is not None:
        mask &= f[None, :] > f[:, None] - window
    s = (compute(q) @ compute(k).transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ compute(v)).to(q.dtype)


# ----------------------------------------------------------------------------------- kernels
@jit
def _fa_fwd_kernel(Q, K, V, O, LSE, sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                   H, S, D, NTOK, WIN, qk_scale,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT_PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dm = offs_d < D
    mm = offs_m < S
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=mm[:, None] & dm[None, :],
                other=0.0)
    qf = offs_m // NTOK
    last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, S) - 1
    kend = tl.minimum(S, (last // NTOK + 1) * NTOK)  # keys past the last row's frame are never seen
    kbeg = tl.maximum(0, (pid_m * BLOCK_M) // NTOK - WIN + 1) * NTOK  # nor keys older than the window
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(kbeg, kend, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nm = offs_n < kend
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], mask=nm[:, None] & dm[None, :],
                    other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :], mask=nm[:, None] & dm[None, :],
                    other=0.0)
        # .to(fp32): torch.compile passes float scalars as fp64 (the first H200 run, 2026-12-05)
        s = (tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale).to(tl.float32)  # (BLOCK_M, BLOCK_N), log2 units
        kf = offs_n[None, :] // NTOK
        ok = (kf <= qf[:, None]) & (kf > qf[:, None] - WIN) & nm[None, :]
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row with nothing visible yet (tile outside its window / empty slots) keeps m = -inf:
        # subtract 0 instead so p = 0 and alpha = 0 rather than NaN from (-inf) - (-inf)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # padding rows past S see nothing; they are not stored
    o = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=mm[:, None] & dm[None, :])
    # lse in natural-log units, rows of one (b, h) contiguous
    tl.store(LSE + bh.to(tl.int64) * S + offs_m, (m_i + tl.log2(l_i)) / 1.4426950408889634, mask=mm)


@jit
def _fa_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, sqb, sqh, sqs, skb, skh, sks, svb, svh, svs,
                        sdb, sdh, sds, H, S, D, NTOK, WIN, scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT_PREC: tl.constexpr):
    # grid (cdiv(S, BLOCK_N), B * H); dq/dk/dv/do share q's layout (contiguous (B, H, S, D))
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dm = offs_d < D
    nm = offs_n < S
    kmask = nm[:, None] & dm[None, :]
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], mask=kmask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :], mask=kmask, other=0.0)
    kf = offs_n // NTOK
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    q_start = (pid_n * BLOCK_N // NTOK) * NTOK  # queries before this tile's first frame never see it
    last_kf = (tl.minimum(pid_n * BLOCK_N + BLOCK_N, S) - 1) // NTOK
    q_end = tl.minimum(S, (last_kf + WIN) * NTOK)  # nor queries whose window has moved past it
    for start in range(q_start, q_end, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mm = offs_m < S
        qmask = mm[:, None] & dm[None, :]
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=qmask, other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :], mask=qmask, other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * S + offs_m, mask=mm, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * S + offs_m, mask=mm, other=0.0)
        s = (tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale).to(tl.float32)  # (BLOCK_M, BLOCK_N)
        qf = (offs_m // NTOK)[:, None]
        ok = (kf[None, :] <= qf) & (kf[None, :] > qf - WIN) & mm[:, None] & nm[None, :]
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=DOT_PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PREC)
    tl.store(DK + b * sdb + h * sdh + offs_n[:, None] * sds + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=kmask)
    tl.store(DV + b * sdb + h * sdh + offs_n[:, None] * sds + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kmask)


@jit
def _fa_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, sqb, sqh, sqs, skb, skh, sks, svb, svh, svs,
                      sdb, sdh, sds, H, S, D, NTOK, WIN, scale,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT_PREC: tl.constexpr):
    # grid (cdiv(S, BLOCK_M), B * H)
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dm = offs_d < D
    mm = offs_m < S
    qmask = mm[:, None] & dm[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :], mask=qmask, other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * S + offs_m, mask=mm, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * S + offs_m, mask=mm, other=0.0)
    qf = offs_m // NTOK
    last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, S) - 1
    kend = tl.minimum(S, (last // NTOK + 1) * NTOK)
    kbeg = tl.maximum(0, (pid_m * BLOCK_M) // NTOK - WIN + 1) * NTOK
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(kbeg, kend, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        nm = offs_n < kend
        kmask = nm[:, None] & dm[None, :]
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], mask=kmask, other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :], mask=kmask, other=0.0)
        s = (tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale).to(tl.float32)
        kf = offs_n[None, :] // NTOK
        ok = (kf <= qf[:, None]) & (kf > qf[:, None] - WIN) & nm[None, :] & mm[:, None]
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    tl.store(DQ + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=qmask)


# --------------------------------------------------------------------------------- launchers
def _blocks(S, D):
    BLOCK_D = max(16, next_pow2(D))
    # 64x64 tiles at D <= 64, 32-wide key tiles beyond (register pressure at D = 128)
    BLOCK_M = 64 if S > 32 else 16 if S <= 16 else 32
    BLOCK_N = min(BLOCK_M, 32 if BLOCK_D > 64 else 64)
    return BLOCK_M, BLOCK_N, BLOCK_D


def _last_dim_contig(*ts):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


def frame_attn_fwd_triton(q, k, v, tokens_per_frame: int, scale: float | None = None, window: int | None = None):
    """Launcher: returns (o (B, H, S, D) in q.dtype, lse (B, H, S) fp32, natural log)."""
    scale = _resolve(q, k, v, tokens_per_frame, scale, window)
    q, k, v = _last_dim_contig(q, k, v)
    B, H, S, D = q.shape
    o = torch.empty(B, H, S, D, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    BLOCK_M, BLOCK_N, BLOCK_D = _blocks(S, D)
    grid = (cdiv(S, BLOCK_M), B * H)
    kernel(_fa_fwd_kernel, q)[grid](q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                                    k.stride(2), v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1),
                                    o.stride(2), H, S, D, tokens_per_frame, _win(window, S, tokens_per_frame),
                                    scale * _LOG2E,
                                    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
                                    DOT_PREC=dot_precision(q.dtype))
    return o, lse


def frame_attn_bwd_triton(do, q, k, v, o, lse, tokens_per_frame: int, scale: float | None = None,
                          window: int | None = None):
    """Launcher: returns (dq, dk, dv) in the inputs' dtype, contiguous (B, H, S, D)."""
    scale = _resolve(q, k, v, tokens_per_frame, scale, window)
    win = _win(window, q.shape[2], tokens_per_frame)
    q, k, v = _last_dim_contig(q, k, v)
    do = do.contiguous()
    B, H, S, D = q.shape
    delta = (o.float() * do.float()).sum(-1).contiguous()  # (B, H, S)
    lse = lse.contiguous()
    dq, dk, dv = (torch.empty(B, H, S, D, device=q.device, dtype=t.dtype) for t in (q, k, v))
    BLOCK_M, BLOCK_N, BLOCK_D = _blocks(S, D)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    meta = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, DOT_PREC=dot_precision(q.dtype))
    kernel(_fa_bwd_dkdv_kernel, q)[(cdiv(S, BLOCK_N), B * H)](q, k, v, do, lse, delta, dk, dv, *strides, H, S, D,
                                                               tokens_per_frame, win, scale, **meta)
    kernel(_fa_bwd_dq_kernel, q)[(cdiv(S, BLOCK_M), B * H)](q, k, v, do, lse, delta, dq, *strides, H, S, D,
                                                             tokens_per_frame, win, scale, **meta)
    return dq, dk, dv


# ------------------------------------------------------- torch implementations (CPU dispatch)
def _scores_torch(q, k, tokens_per_frame, scale, window):
    S = q.shape[-2]
    f = torch.arange(S, device=q.device) // tokens_per_frame
    s = (compute(q) @ compute(k).transpose(-1, -2)) * scale  # (B, H, S, S)
    mask = (f[None, :] <= f[:, None]) & (f[None, :] > f[:, None] - _win(window, S, tokens_per_frame))
    return s.masked_fill(~mask, float("-inf"))


def _fwd_torch(q, k, v, tokens_per_frame, scale, window):
    s = _scores_torch(q, k, tokens_per_frame, scale, window)
    lse = torch.logsumexp(s, -1)
    return ((s - lse[..., None]).exp() @ compute(v)).to(q.dtype), lse


def _bwd_torch(do, q, k, v, o, lse, tokens_per_frame, scale, window):
    p = (_scores_torch(q, k, tokens_per_frame, scale, window) - lse[..., None].to(compute(q).dtype)).exp()  # (B, H, S, S)
    dof = compute(do)
    dv = p.transpose(-1, -2) @ dof
    dp = dof @ compute(v).transpose(-1, -2)
    ds = p * (dp - (compute(o) * dof).sum(-1, keepdim=True))
    dq = ds @ compute(k) * scale
    dk = ds.transpose(-1, -2) @ compute(q) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ------------------------------------------------------------------------------ registration
@triton_op("dvakern::frame_attn_fwd", mutates_args=())
def _fa_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens_per_frame: int,
               scale: float, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    # window <= 0: unlimited
    if q.device.type == "cuda" or use_triton(q):
        return frame_attn_fwd_triton(q, k, v, tokens_per_frame, scale, window)
    return _fwd_torch(q, k, v, tokens_per_frame, scale, window)


@triton_op("dvakern::frame_attn_bwd", mutates_args=())
def _fa_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
               lse: torch.Tensor, tokens_per_frame: int, scale: float,
               window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.device.type == "cuda" or use_triton(q):
        return frame_attn_bwd_triton(do, q, k, v, o, lse, tokens_per_frame, scale, window)
    return _bwd_torch(do, q, k, v, o, lse, tokens_per_frame, scale, window)


def _fa_setup(ctx, inputs, output):
    q, k, v, tokens_per_frame, scale, window = inputs
    o, lse = output
    ctx.tokens_per_frame, ctx.scale, ctx.window = tokens_per_frame, scale, window
    ctx.save_for_backward(q, k, v, o, lse)


def _fa_backward(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _fa_bwd_op(do, q, k, v, o, lse, ctx.tokens_per_frame, ctx.scale, ctx.window)
    return dq, dk, dv, None, None, None


_fa_fwd_op.register_autograd(_fa_backward, setup_context=_fa_setup)


def frame_attention(q, k, v, tokens_per_frame: int, scale: float | None = None, window: int | None = None):
    """window: attend to the last `window` frames only (None: all past frames)."""
    if window is not None and window < 1:
        raise ValueError(f"frame_attention: window must be >= 1 frame (or None), got {window}")
    if use_triton(q):
        scale = _resolve(q, k, v, tokens_per_frame, scale, window)
        return _fa_fwd_op(q, k, v, tokens_per_frame, scale, 0 if window is None else int(window))[0]
    return frame_attn_ref(q, k, v, tokens_per_frame, scale, window)
