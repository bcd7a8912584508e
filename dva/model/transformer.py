"""Block-causal transformer over frames, with a static ring KV cache for decoding.

Semantics: sliding-window block-causal attention. Every token of frame t attends to every token
of frames t-W+1 .. t (W = cfg.window), with RoPE on the frame index (queries and keys rotated
by their frame index, so scores depend only on frame differences). The ring cache stores the
UN-rotated keys of the last W frames (dvakern/ring_decode.py layout) and rotates them by their
age at read time, so positions never run out: control can run forever.

`forward` (training / prefill) and `step` (one frame through the cache) compute the same
function: tests/test_model.py checks incremental == full, before and after wrap-around.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import dvakern

from .config import DVAConfig


class RingCache:
    """Static per-layer K/V ring of W frames + slot positions + the next frame index.

    k[l], v[l]: (B, H, W, N, Dh); slot_pos: (W,) int64, -1 = empty; pos: 0-dim int64 = index of
    the next frame to be appended. Everything is updated in place (CUDA-graph friendly).
    """

    def __init__(self, n_layers, batch, heads, window, tokens, head_dim, device, dtype=torch.float32):
        shape = (batch, heads, window, tokens, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.slot_pos = torch.full((window,), -1, dtype=torch.int64, device=device)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self.window = window

    def reset(self) -> None:
        self.slot_pos.fill_(-1)
        self.pos.zero_()

    def mark(self, horizon: int | None = None) -> dict:
        """Remember the cache so `rollback` can restore it exactly after up to `horizon` more
        frames (default W) are observed: only the slots those frames will overwrite are saved."""
        W = self.window
        horizon = W if horizon is None else int(horizon)
        if horizon < 0:
            raise ValueError(f"mark: horizon must be >= 0, got {horizon}")
        p = int(self.pos)  # one host sync per real frame; fine outside the captured step
        slots = torch.tensor([(p + i) % W for i in range(min(horizon, W))], dtype=torch.int64,
                             device=self.slot_pos.device)
        return {"pos": p, "horizon": horizon, "slots": slots, "slot_pos": self.slot_pos.clone(),
                "k": [k.index_select(2, slots) for k in self.k], "v": [v.index_select(2, slots) for v in self.v]}

    def rollback(self, mark: dict) -> None:
        n = int(self.pos) - mark["pos"]
        if n < 0 or n > mark["horizon"]:
            raise ValueError(f"rollback: {n} frames were observed since mark(horizon={mark['horizon']}); "
                             "the saved slots cannot restore the cache")
        for k, ks in zip(self.k, mark["k"]):
            k.index_copy_(2, mark["slots"], ks)
        for v, vs in zip(self.v, mark["v"]):
            v.index_copy_(2, mark["slots"], vs)
        self.slot_pos.copy_(mark["slot_pos"])
        self.pos.fill_(mark["pos"])


class Block(nn.Module):
    def __init__(self, cfg: DVAConfig):
        super().__init__()
        D = cfg.d_model
        self.h, self.dh = cfg.n_heads, D // cfg.n_heads
        self.rope_base = cfg.rope_base
        self.ln1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.ln2 = nn.LayerNorm(D)
        hid = int(D * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, hid), nn.GELU(), nn.Linear(hid, D))

    def _qkv(self, x):
        B, S, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, S, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # 3x (B, H, S, Dh)
        return q, k, v

    def forward(self, x, frame_pos, tokens_per_frame: int, window: int):
        """x: (B, T*N, D); frame_pos: (T*N,) frame index of each token."""
        B, S, D = x.shape
        q, k, v = self._qkv(x)
        q = dvakern.apply_rope_ref(q, frame_pos, self.rope_base)
        k = dvakern.apply_rope_ref(k, frame_pos, self.rope_base)
        # sequences longer than the ring window (training with L > W) attend to the last W frames,
        # exactly what stepping through the ring cache sees
        win = window if S // tokens_per_frame > window else None
        o = dvakern.frame_attention(q, k, v, tokens_per_frame, window=win)
        x = x + self.proj(o.transpose(1, 2).reshape(B, S, D))  # (B, S, D)
        return x + self.mlp(self.ln2(x))

    def step(self, x, k_cache, v_cache, slot_pos, pos):
        """x: (B, N, D) tokens of the new frame; appends its K/V to the ring and attends."""
        B, N, D = x.shape
        q, k, v = self._qkv(x)  # (B, H, N, Dh), un-rotated
        o = dvakern.ring_decode_attention(q, k, v, k_cache, v_cache, slot_pos, pos, self.rope_base)
        x = x + self.proj(o.transpose(1, 2).reshape(B, N, D))  # (B, N, D)
        return x + self.mlp(self.ln2(x))

    def kv(self, x):
        """Un-rotated K/V of x (B, S, D) -> (B, H, S, Dh) each (for prefilling the ring)."""
        _, k, v = self._qkv(x)
        return k, v


class CausalTransformer(nn.Module):
    def __init__(self, cfg: DVAConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x, tokens_per_frame: int, start: int = 0):
        """x: (B, T*N, D) tokens of T frames (frame-major) -> (B, T*N, D)."""
        frame_pos = (torch.arange(x.shape[1], device=x.device) // tokens_per_frame + start).float()
        for blk in self.blocks:
            x = blk(x, frame_pos, tokens_per_frame, self.cfg.window)
        return self.ln_f(x)

    def init_cache(self, batch: int, device, dtype=torch.float32) -> RingCache:
        c = self.cfg
        return RingCache(c.n_layers, batch, c.n_heads, c.window, c.tokens_per_frame, c.d_model // c.n_heads,
                         device, dtype)

    def step(self, x, cache: RingCache):
        """x: (B, N, D) tokens of one new frame -> (B, N, D); appends to the cache, pos += 1."""
        for blk, kc, vc in zip(self.blocks, cache.k, cache.v):
            x = blk.step(x, kc, vc, cache.slot_pos, cache.pos)
        cache.pos.add_(1)
        return self.ln_f(x)

    def prefill(self, x, cache: RingCache, tokens_per_frame: int):
        """Full forward over T frames (B, T*N, D) from an empty cache, then store the last
        min(T, W) frames' K/V in the ring as if they had been stepped. Returns (B, T*N, D)."""
        B, S, D = x.shape
        N, W = tokens_per_frame, cache.window
        T = S // N
        frame_pos = (torch.arange(S, device=x.device) // N).float()
        keep = range(max(0, T - W), T)
        slots = torch.tensor([t % W for t in keep], dtype=torch.int64, device=x.device)
        for blk, kc, vc in zip(self.blocks, cache.k, cache.v):
            k, v = blk.kv(x)  # (B, H, T*N, Dh)
            H, Dh = k.shape[1], k.shape[3]
            k = k.view(B, H, T, N, Dh)[:, :, keep.start:]
            v = v.view(B, H, T, N, Dh)[:, :, keep.start:]
            kc.index_copy_(2, slots, k.to(kc.dtype))
            vc.index_copy_(2, slots, v.to(vc.dtype))
            x = blk(x, frame_pos, N, self.cfg.window)
        cache.slot_pos.fill_(-1)
        cache.slot_pos.index_copy_(0, slots, torch.tensor(list(keep), dtype=torch.int64, device=x.device))
        cache.pos.fill_(T)
        return self.ln_f(x)
