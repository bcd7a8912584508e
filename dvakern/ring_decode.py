"""Decode attention over a ring KV cache, with the append of the new frame fused in.

Cache: k_cache, v_cache (B, H, W, N, D) hold the UN-rotated keys/values of up to W frames;
slot_pos (W,) int64 holds the frame index stored in each slot (-1: empty). The new frame has
index `pos` (0-dim int64 tensor, so a CUDA graph can replay the step without host sync) and
goes to slot pos % W. Its N query tokens attend to every valid slot (pos - W < slot_pos <= pos),
with RoPE on the frame index applied on the fly: queries at relative position 0, keys at
slot_pos - pos (<= 0). Only position differences enter the scores, so positions never run out
and the angles stay small however long control runs.

Mutates k_cache, v_cache and slot_pos in place; returns o (B, H, N, D) in q.dtype.
"""
from __future__ import annotations

import math

import torch

from ._backend import use_triton
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
    k = apply_rope_ref(k_cache.reshape(B, H, W * N, D).float(), kpos, rope_base)
    v = v_cache.reshape(B, H, W * N, D).float()
    qr = apply_rope_ref(q.float(), torch.zeros(N, device=q.device), rope_base)  # identity rotation
    s = (qr @ k.transpose(-1, -2)) * scale  # (B, H, N, W*N)
    s = s.masked_fill(~valid.repeat_interleave(N), float("-inf"))
    return (s.softmax(-1) @ v).to(q.dtype)


def ring_decode_attention(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base: float = 10000.0,
                          scale: float | None = None):
    if use_triton(q):
        raise NotImplementedError("triton ring decode not wired yet")
    return ring_decode_attn_ref(q, k_new, v_new, k_cache, v_cache, slot_pos, pos, rope_base, scale)
