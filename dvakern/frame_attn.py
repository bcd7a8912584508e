"""Block-causal frame attention (training / prefill).

q, k, v: (B, H, S, D) with S = T * N tokens laid out frame-major (N tokens per frame).
Token i attends to token j iff frame(j) <= frame(i): full attention inside a frame, causal
across frames. RoPE, if any, is applied by the caller before this op.
"""
from __future__ import annotations

import math

import torch

from ._backend import use_triton


def frame_attn_ref(q, k, v, tokens_per_frame: int, scale: float | None = None):
    """Plain PyTorch reference, computed in fp32, returned in q.dtype."""
    S, D = q.shape[-2], q.shape[-1]
    if S % tokens_per_frame:
        raise ValueError(f"sequence length {S} is not a multiple of tokens_per_frame={tokens_per_frame}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    f = torch.arange(S, device=q.device) // tokens_per_frame
    mask = f[None, :] <= f[:, None]  # (S, S): query frame >= key frame
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def frame_attention(q, k, v, tokens_per_frame: int, scale: float | None = None):
    if use_triton(q):
        raise NotImplementedError("triton frame attention not wired yet")
    return frame_attn_ref(q, k, v, tokens_per_frame, scale)
