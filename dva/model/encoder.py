"""CNN frame encoder: a frame -> N tokens for the transformer + multi-scale spatial features that
the decoder takes as skips (the skip makes decoder training much faster: it starts from "copy
the current frame" and only has to learn the change)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DVAConfig
from .layers import GNSiLU, ResBlock, conv3


class Encoder(nn.Module):
    def __init__(self, cfg: DVAConfig):
        super().__init__()
        ch, g = cfg.enc_ch, cfg.groups
        # space-to-depth 2x first: the encoder works at img/2 (12 channels), 4x cheaper than full res
        self.stem = conv3(12, ch[0])
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, c in enumerate(ch):
            self.blocks.append(ResBlock(c, c, g))
            if i + 1 < len(ch):
                self.downs.append(conv3(c, ch[i + 1], stride=2))
        # lowest level -> token grid: a patchify conv (kernel = stride), learnable, keeps layout
        low = cfg.img // 2 // 2 ** (len(ch) - 1)
        if low % cfg.token_grid:
            raise ValueError(f"token_grid={cfg.token_grid} must divide the lowest feature map size {low}")
        k = low // cfg.token_grid
        self.out_norm = GNSiLU(ch[-1], g)
        self.to_tokens = nn.Conv2d(ch[-1], cfg.d_model, k, stride=k)
        self.tok_pos = nn.Parameter(torch.randn(cfg.tokens_per_frame, cfg.d_model) * 0.02)

    def maps(self, x, levels: int | None = None):
        """x: (B, 3, H, W) in [-1, 1] -> the feature maps [ (B, c_i, H/2^(i+1), W/2^(i+1)) ] of the
        first `levels` levels (all by default: the decoder's skips)."""
        h = self.stem(F.pixel_unshuffle(x, 2))  # (B, c0, H/2, W/2)
        feats = []
        for i, blk in enumerate(self.blocks[:levels]):
            h = blk(h if i == 0 else self.downs[i - 1](h))
            feats.append(h)
        return feats

    def forward(self, x):
        """x: (B, 3, H, W) in [-1, 1] -> tokens (B, N, D), feats (maps())."""
        feats = self.maps(x)
        t = self.to_tokens(self.out_norm(feats[-1]))  # (B, D, g, g)
        t = t.flatten(2).transpose(1, 2)  # (B, N, D)
        return t + self.tok_pos, feats
