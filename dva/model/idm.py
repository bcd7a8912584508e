"""Inverse dynamics model: frames (t-1, t, t+1) -> the action taken at t, in pixel units.

Three frames, not two: the pointer leads the disc (from rest the disc covers only ~30% of the way
to the target in one step, DESIGN.md section 3), so the action depends on the disc's velocity,
which needs the frame before t.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import frames as fr
from .config import DVAConfig
from .layers import GNSiLU, conv3


class IDM(nn.Module):
    def __init__(self, cfg: DVAConfig):
        super().__init__()
        self.cfg = cfg
        ch, g = cfg.idm_ch, cfg.groups
        layers: list[nn.Module] = [conv3(36, ch[0])]  # 3 frames x 3 channels, space-to-depth 2x
        for i in range(1, len(ch)):
            layers += [GNSiLU(ch[i - 1], g), conv3(ch[i - 1], ch[i], stride=2)]
        self.body = nn.Sequential(*layers)
        self.norm = GNSiLU(ch[-1], g)
        side = cfg.img // 2 // 2 ** (len(ch) - 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch[-1] * side * side, 256), nn.SiLU(), nn.Linear(256, 2))

    def forward_norm(self, f_prev, f_t, f_next):
        """Each f: (B, 3, H, W) in [-1, 1] -> action (B, 2) in [-1, 1] units."""
        x = torch.cat([f_prev, f_t, f_next], dim=1)  # (B, 9, H, W)
        h = self.norm(self.body(F.pixel_unshuffle(x, 2)))  # (B, C, s, s)
        return self.head(h)

    def forward(self, f_prev, f_t, f_next):
        """-> (B, 2) actions in the data's units (cfg.action_range; PushT: px in [0, 512])."""
        return fr.denorm_action(self.forward_norm(f_prev, f_t, f_next), self.cfg.action_range)

    def loss(self, x, actions):
        """x: (B, L, 3, H, W) in [-1, 1], actions (B, L, 2) px; L >= 3. Every interior position t
        (1..L-2) is a sample: (x[t-1], x[t], x[t+1]) -> actions[t]. Returns (loss, mean px error)."""
        B, L = x.shape[:2]
        if L < 3:
            raise ValueError(f"IDM training needs sequences of at least 3 frames, got L={L}")
        prev, cur, nxt = (x[:, i:L - 2 + i].flatten(0, 1) for i in range(3))  # (B*(L-2), 3, H, W)
        rng = self.cfg.action_range
        target = fr.norm_action(actions[:, 1:L - 1].flatten(0, 1), rng)
        pred = self.forward_norm(prev, cur, nxt)
        loss = F.smooth_l1_loss(pred.float(), target, beta=0.02)
        err_px = ((pred.detach().float() - target) * ((rng[1] - rng[0]) / 2)).norm(dim=-1).mean()
        return loss, err_px
