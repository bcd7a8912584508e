"""Decode attention over a ring KV cache, with the append of the new frame fused in.

Cache: k_cache, v_cache (B, H, W, N, D) hold the UN-rotated keys/values of up to W frames;
slot_pos (W,) int64 holds the frame index stored in each slot (-1: empty). The new frame has
index `pos` (0-dim int64 tensor, so a CUDA graph can replay the step without host sync) and
goes to slot pos % W. Its N query tokens attend to every valid slot (pos - W < slot_pos <= pos),
with RoPE on the frame index applied on the fly: queries at relative position 0, keys at
slot_pos - pos (<= 0). Only position differences enter the scores, so positions never run out
and the angles stay small however long control runs.

Mutates k_cache, v_cache and slot_pos in place; returns o (B, H, N, D) in q.dtype.

Triton path: one program per (batch, head) writes the new frame's K/V into its slot (program 0
also writes slot_pos), then streams the window's keys with an online softmax, rotating each key
by its age on the fly (cos/sin computed in-kernel, no table). The new frame's keys are taken
from k_new directly (rounded to the cache dtype, as the reference reads them back), so no
program ever reads a slot another program may be writing. The scores use two half-width dots
(rotate-half RoPE). pos is read on device: the launch is the same every step (CUDA-graph safe).
"""
from __future__ import annotations

import math

import torch

from ._backend import compute, use_triton
from ._triton import dot_precision, jit, kernel, next_pow2, tl, triton_op
from .rope import apply_rope_ref


def ring_decode_attn_ref(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base: float = 10000.0,
                         scale: float | None = None):
    B, H, W, N, D = k_cache.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    slot = torch.remainder(pos, W)
    # append (index_copy keeps `slot` on device: no host sync)
    k_cache.index_copy_(2, slot.view(1), k_new.unsqueeze(2).to(k_cache.dtype))
    v_cache.index_copy_(2, slot.view(1), v_new.unsqueeze(2).to(v_cache.dtype))
    slot_pos.index_copy_(0, slot.view(1), pos.view(1).to(slot_pos.dtype))
    valid = (slot_pos >= 0) & (slot_pos <= pos) & (slot_pos > pos - W)  # (W,)
    rel = (slot_pos - pos).to(torch.float32)  # (W,) <= 0 for valid slots
    kpos = rel.repeat_interleave(N)  # (W*N,)
    k = apply_rope_ref(compute(k_cache.reshape(B, H, W * N, D)), kpos, rope_base)
    v = compute(v_cache.reshape(B, H, W * N, D))
    qr = apply_rope_ref(compute(q), torch.zeros(N, device=q.device), rope_base)  # identity rotation
    s = (qr @ k.transpose(-1, -2)) * scale  # (B, H, N, W*N)
    s = s.masked_fill(~valid.repeat_interleave(N), float("-inf"))
    return (s.softmax(-1) @ v).to(q.dtype)


def _check(q, k_new, v_new, k_cache, v_cache, slot_pos, pos):
    if k_cache.dim() != 5 or v_cache.shape != k_cache.shape:
        raise ValueError(f"ring_decode: k_cache/v_cache must be (B, H, W, N, D), got {tuple(k_cache.shape)}"
                         f"/{tuple(v_cache.shape)}")
    B, H, W, N, D = k_cache.shape
    for name, t in (("q", q), ("k_new", k_new), ("v_new", v_new)):
        if t.shape != (B, H, N, D):
            raise ValueError(f"ring_decode: {name} must be {(B, H, N, D)} to match the cache, got {tuple(t.shape)}")
    if slot_pos.shape != (W,) or slot_pos.dtype != torch.int64:
        raise ValueError(f"ring_decode: slot_pos must be int64 ({W},), got {slot_pos.dtype} {tuple(slot_pos.shape)}")
    if pos.dim() != 0:
        raise ValueError(f"ring_decode: pos must be a 0-dim int64 tensor, got shape {tuple(pos.shape)}")
    if D % 2:
        raise ValueError(f"ring_decode: head dim {D} must be even for RoPE")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("ring_decode: k_cache and v_cache must be contiguous (they are written in place)")


@jit
def _ring_decode_kernel(Q, KN, VN, KC, VC, SLOT_POS, POS, O, H, W, N, D, qk_scale, log2_base,
                        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    # grid (B * H,); q, k_new, v_new, o contiguous (B, H, N, D); caches contiguous (B, H, W, N, D)
    bh = tl.program_id(0).to(tl.int64)
    HALF = D // 2
    pos = tl.load(POS)
    cur = pos % W
    new_base = bh * N * D
    cache_base = bh * W * N * D
    # --- fused append of the new frame (N, D) into slot `cur`
    tq = tl.arange(0, BLOCK_Q)
    dd = tl.arange(0, BLOCK_D)
    am = (tq[:, None] < N) & (dd[None, :] < D)
    aofs = tq[:, None] * D + dd[None, :]
    kn = tl.load(KN + new_base + aofs, mask=am, other=0.0)
    vn = tl.load(VN + new_base + aofs, mask=am, other=0.0)
    tl.store(KC + cache_base + cur * N * D + aofs, kn.to(KC.dtype.element_ty), mask=am)
    tl.store(VC + cache_base + cur * N * D + aofs, vn.to(VC.dtype.element_ty), mask=am)
    if bh == 0:
        tl.store(SLOT_POS + cur, pos)
    # --- queries, split into rotate-half pairs (relative position 0: no rotation)
    hh = tl.arange(0, BLOCK_H)
    hm = hh < HALF
    qm = (tq[:, None] < N) & hm[None, :]
    q1 = tl.load(Q + new_base + tq[:, None] * D + hh[None, :], mask=qm, other=0.0).to(tl.float32)
    q2 = tl.load(Q + new_base + tq[:, None] * D + HALF + hh[None, :], mask=qm, other=0.0).to(tl.float32)
    # fp32 casts: under torch.compile (wrap_triton) float scalars arrive as fp64, and fp64 angles
    # made tl.dot mix fp32 and fp64 (the first H200 run, 2026-12-05)
    inv = tl.exp2(-(2.0 * hh.to(tl.float32) / D) * log2_base).to(tl.float32)  # (BLOCK_H,) base^(-2i/D)
    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for start in range(0, W * N, BLOCK_K):
        j = start + tl.arange(0, BLOCK_K)  # flattened (slot, token) index
        jm = j < W * N
        slot = j // N
        tok = j % N
        is_cur = slot == cur
        sp = tl.load(SLOT_POS + slot, mask=jm, other=-1)
        sp = tl.where(is_cur, pos, sp)
        valid = jm & (sp >= 0) & (sp <= pos) & (sp > pos - W)
        from_cache = valid & (slot != cur)
        from_new = valid & is_cur
        kofs = j[:, None] * D + hh[None, :]
        nofs = tok[:, None] * D + hh[None, :]
        cm2 = from_cache[:, None] & hm[None, :]
        nm2 = from_new[:, None] & hm[None, :]
        k1 = tl.load(KC + cache_base + kofs, mask=cm2, other=0.0).to(tl.float32) + \
            tl.load(KN + new_base + nofs, mask=nm2, other=0.0).to(KC.dtype.element_ty).to(tl.float32)
        k2 = tl.load(KC + cache_base + HALF + kofs, mask=cm2, other=0.0).to(tl.float32) + \
            tl.load(KN + new_base + HALF + nofs, mask=nm2, other=0.0).to(KC.dtype.element_ty).to(tl.float32)
        ang = (sp - pos).to(tl.float32)[:, None] * inv[None, :]  # (BLOCK_K, BLOCK_H), age <= 0
        c = tl.cos(ang)
        s_ = tl.sin(ang)
        k1r = k1 * c - k2 * s_
        k2r = k1 * s_ + k2 * c
        s = tl.dot(q1, tl.trans(k1r), input_precision=DOT_PREC)
        s += tl.dot(q2, tl.trans(k2r), input_precision=DOT_PREC)
        s = (s * qk_scale).to(tl.float32)  # (BLOCK_Q, BLOCK_K), log2 units
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row with nothing visible yet (tile outside its window / empty slots) keeps m = -inf:
        # subtract 0 instead so p = 0 and alpha = 0 rather than NaN from (-inf) - (-inf)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        vofs = j[:, None] * D + dd[None, :]
        vmask = dd[None, :] < D
        v = tl.load(VC + cache_base + vofs, mask=from_cache[:, None] & vmask, other=0.0).to(tl.float32) + \
            tl.load(VN + new_base + tok[:, None] * D + dd[None, :], mask=from_new[:, None] & vmask,
                    other=0.0).to(VC.dtype.element_ty).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PREC)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(O + new_base + aofs, o.to(O.dtype.element_ty), mask=am)


def ring_decode_triton(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base: float = 10000.0,
                       scale: float | None = None):
    """Launcher (same contract as ring_decode_attn_ref)."""
    _check(q, k_new, v_new, k_cache, v_cache, slot_pos, pos)
    B, H, W, N, D = k_cache.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k_new, v_new = q.contiguous(), k_new.contiguous(), v_new.contiguous()
    o = torch.empty_like(q)
    BLOCK_Q = max(16, next_pow2(N))
    BLOCK_D = max(16, next_pow2(D))
    BLOCK_H = max(16, next_pow2(D // 2))
    BLOCK_K = 64 if BLOCK_D <= 64 else 32
    kernel(_ring_decode_kernel, q)[(B * H,)](q, k_new, v_new, k_cache, v_cache, slot_pos, pos, o, H, W, N, D,
                                             scale * 1.4426950408889634, math.log2(rope_base),
                                             BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K, BLOCK_H=BLOCK_H, BLOCK_D=BLOCK_D,
                                             DOT_PREC=dot_precision(q.dtype))
    return o


@triton_op("dvakern::ring_decode", mutates_args=("k_cache", "v_cache", "slot_pos"))
def _ring_decode_op(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_pos: torch.Tensor, pos: torch.Tensor, rope_base: float,
                    scale: float) -> torch.Tensor:
    if q.device.type == "cuda" or use_triton(q):
        return ring_decode_triton(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base, scale)
    return ring_decode_attn_ref(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base, scale)


def ring_decode_attention(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base: float = 10000.0,
                          scale: float | None = None):
    if use_triton(q):
        _check(q, k_new, v_new, k_cache, v_cache, slot_pos, pos)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        return _ring_decode_op(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, float(rope_base), scale)
    return ring_decode_attn_ref(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base, scale)
