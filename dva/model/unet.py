"""Flow-matching U-Net decoder: (x_tau, tau | frame t, transformer context of frame t, encoder
skips of frame t, optional action) -> the clean next frame x_{t+1} (x-prediction); dva.DVA turns
it into the flow velocity (x_hat - x_tau) / (1 - tau) for the sampler.

Why x-prediction, as a residual on frame t: most of a PushT frame does not change between
steps, so "copy frame t" is the right starting point (the zero-initialised output layer makes it
the prediction at init) and the network only learns the change. Predicting the velocity x - noise
directly made the tiny model spend its first ~60 steps learning to reproduce the noise (loss
stuck at ~1.0 on 2-core CPU runs).

Works at img/2 via space-to-depth (the 96x96 frame becomes 12 x 48 x 48): measured on 2 CPU
cores, a 32/64/128 U-Net costs ~3x less per sampler step at 48x48 than at 96x96 (DESIGN.md 6).
Conditioning enters three ways: a modulation vector (tau + pooled context + action) on every
res block, the encoder features of frame t added at each level, and the context tokens laid out
on their grid and added at the bottleneck (where the predicted motion is decided).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DVAConfig
from .layers import GNSiLU, ResBlock, ScalarEmbed, conv3


@dataclass
class Context:
    """What the decoder needs to predict frame t+1: transformer output (B, N, D) of frame t, the
    encoder's features of frame t (the spatial skip) and frame t itself (B, 3, H, W). For a
    dreamed frame t under DVAConfig.warp_anchor (see DVA.dream) also the last real frame (B, 3, H, W)
    and the rigid layers' motions (B, K - 1, 4) from frame t to it; None for a real frame."""

    tokens: torch.Tensor
    feats: list
    frame: torch.Tensor
    anchor: torch.Tensor | None = None
    motion: torch.Tensor | None = None


@dataclass
class DecoderOut:
    """Everything one decoder evaluation computes; the fields of heads the model lacks are None."""

    x_hat: torch.Tensor  # the predicted next frame (B, 3, H, W)
    warped: torch.Tensor  # frame t warped by the displacement, before the residual (frame t without a warp head)
    dense: torch.Tensor | None = None  # the warp head's dense displacement (B, 2, H/2, W/2), px
    disp: torch.Tensor | None = None  # the displacement applied: dense, or made rigid by layers (B, 2, H, W), px
    logits: torch.Tensor | None = None  # the rigid layers' mask logits (B, K, H/2, W/2)
    motion: torch.Tensor | None = None  # the rigid layers' motion from the predicted frame to the anchor (or frame t)


def action_map(action, action_mask, size: int, dtype, device, batch: int, sigma_px: float = 12.0):
    """The pointer target as a Gaussian blob on the decoder's grid (B, 1, size, size), zeros where
    the action is absent. Why: the action says *where* the disc is pulled; a conv net reads a
    location from a map far more easily than from a global vector (the frame's pixel (col, row)
    is the action (x, y) * 96 / 512, no flip). sigma_px is in the 512-px action space."""
    if action is None:
        return torch.zeros(batch, 1, size, size, dtype=dtype, device=device)
    g = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1  # cell centres in [-1, 1]
    s = sigma_px / 256.0
    dx = (g[None, :] - action[:, 0:1].float()) ** 2  # (B, size) over columns
    dy = (g[None, :] - action[:, 1:2].float()) ** 2  # (B, size) over rows
    blob = torch.exp(-(dy[:, :, None] + dx[:, None, :]) / (2 * s * s))  # (B, rows, cols)
    if action_mask is not None:
        blob = blob * action_mask[:, None, None].float()
    return blob[:, None].to(dtype)


class FlowUNet(nn.Module):
    def __init__(self, cfg: DVAConfig):
        super().__init__()
        ch, g, cd, nb = cfg.dec_ch, cfg.groups, cfg.cond_dim, cfg.dec_blocks
        self.grid = cfg.token_grid
        self.tau_emb = ScalarEmbed(1, cd, max_freq=1000.0)
        self.act_emb = ScalarEmbed(2, cd, max_freq=200.0)  # 1 px = 1/256 in normalized units
        self.null_act = nn.Parameter(torch.zeros(cd))  # used where the action is absent / dropped
        self.ctx_emb = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cd))
        self.prev_emb = ScalarEmbed(2, cd, max_freq=200.0) if cfg.prev_action else None  # DVAConfig.prev_action
        if self.prev_emb is not None:
            nn.init.zeros_(self.prev_emb.mlp[-1].weight)
            nn.init.zeros_(self.prev_emb.mlp[-1].bias)
            self.null_prev = nn.Parameter(torch.zeros(cd))
        self.cond_act = nn.SiLU()

        # x_tau and frame t (space-to-depth 2x: 24 channels) + the action's target as a blob (1)
        self.stem = conv3(25, ch[0])
        self.skips = nn.ModuleList(nn.Conv2d(ce, c, 1) for ce, c in zip(cfg.enc_ch, ch))
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(ch):
            self.down.append(nn.ModuleList(ResBlock(c, c, g, cd) for _ in range(nb)))
            if i + 1 < len(ch):
                self.downsample.append(conv3(c, ch[i + 1], stride=2))
        self.ctx_map = nn.Conv2d(cfg.d_model, ch[-1], 1)
        self.mid = ResBlock(ch[-1], ch[-1], g, cd)
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for i in reversed(range(len(ch))):
            self.up.append(nn.ModuleList(ResBlock(2 * ch[i] if j == 0 else ch[i], ch[i], g, cd) for j in range(nb)))
            if i > 0:
                self.upconv.append(conv3(ch[i], ch[i - 1]))
        self.out_norm = GNSiLU(ch[0], g)
        self.out = conv3(ch[0], 12)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # displacement (dx, dy) in FLOW_GAIN pixels of the full frame, at H/2 (None: no warp head),
        # made piecewise rigid by RigidLayers with warp_layers = K > 0
        self.flow = conv3(ch[0], 2) if cfg.warp else None
        if self.flow is not None:
            nn.init.zeros_(self.flow.weight)
            nn.init.zeros_(self.flow.bias)
        self.rigid = RigidLayers(ch[0], cfg.warp_layers, dense_rest=cfg.body_masks > 0) if cfg.warp_layers else None

    def cond(self, tau, ctx, action, action_mask=None, prev=None, prev_mask=None):
        """Modulation vector (B, cond_dim). action: (B, 2) in [-1, 1] or None; action_mask (B,)
        bool: True where the action is present (training drops it at random). prev, prev_mask:
        the same for the action executed into frame t (DVAConfig.prev_action; else ignored)."""
        c = self.tau_emb(tau.view(-1, 1)) + self.ctx_emb(ctx.mean(dim=1))
        if self.prev_emb is not None:
            if prev is None:
                c = c + self.null_prev
            else:
                p = self.prev_emb(prev)
                c = c + (p if prev_mask is None else torch.where(prev_mask[:, None], p, self.null_prev.to(p.dtype)))
        if action is None:
            a = self.null_act.expand(c.shape[0], -1)
        else:
            a = self.act_emb(action)
            if action_mask is not None:
                a = torch.where(action_mask[:, None], a, self.null_act.to(a.dtype))
        return self.cond_act(c + a)

    def forward(self, x_tau, tau, ctx: Context, action=None, action_mask=None, prev=None, prev_mask=None) -> DecoderOut:
        """x_tau: (B, 3, H, W); tau: (B,); ctx: the Context of frame t; action, action_mask, prev,
        prev_mask as in cond(). With ctx.anchor (DVAConfig.warp_anchor) the rigid layers (T, disc)
        sample the anchor, the last real frame, by their motion from frame t to it composed with
        this step's, and DecoderOut.motion is the composed one."""
        frame, feats = ctx.frame, ctx.feats
        c = self.cond(tau, ctx.tokens, action, action_mask, prev, prev_mask)
        x = F.pixel_unshuffle(torch.cat([x_tau, frame], dim=1), 2)  # (B, 24, H/2, W/2)
        blob = action_map(action, action_mask, x.shape[-1], x.dtype, x.device, x.shape[0])  # (B, 1, H/2, W/2)
        h = self.stem(torch.cat([x, blob], dim=1))  # (B, c0, H/2, W/2)
        hs = []
        for i, blocks in enumerate(self.down):
            h = h + self.skips[i](feats[i])
            for blk in blocks:
                h = blk(h, c)
            hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        B, N, D = ctx.tokens.shape
        grid = ctx.tokens.transpose(1, 2).reshape(B, D, self.grid, self.grid)  # (B, D, g, g)
        h = h + F.interpolate(self.ctx_map(grid), size=h.shape[-2:], mode="nearest")
        h = self.mid(h, c)
        for j, blocks in enumerate(self.up):
            h = torch.cat([h, hs.pop()], dim=1)
            for blk in blocks:
                h = blk(h, c)
            if j < len(self.upconv):
                h = self.upconv[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.out_norm(h)
        base, dense, disp, logits, motion = frame, None, None, None, None
        if self.flow is not None:
            disp = dense = FLOW_GAIN * self.flow(h)
            if self.rigid is not None:
                disp, m, motion, logits = self.rigid(h, dense, frame.shape[-1])
            base = warp(frame, disp)
            if ctx.anchor is not None:  # the rigid layers' pixels come from the anchor frame instead
                motion = compose(ctx.motion, motion)
                from_anchor = warp(ctx.anchor, self.rigid.field(m, motion, dense))
                base = m[:, :1] * base + (1 - m[:, :1]) * from_anchor
        x_hat = base + F.pixel_shuffle(self.out(h), 2)  # (B, 3, H, W)
        return DecoderOut(x_hat, base, dense, disp, logits, motion)


# The flow head's output unit in pixels: Adam moves a weight by ~lr per step whatever the gradient's
# scale, so the gain sets how fast the displacement can grow from its zero init.
FLOW_GAIN = 4.0


class RigidLayers(nn.Module):
    """Makes the warp head's dense displacement piecewise rigid: every pixel belongs to one of K
    layers (the argmax of K mask logits; the gradient reaches the logits through the softmax,
    straight-through), and each layer moves by the rotation + shift that best fits the dense
    field on its pixels (weighted 2-D Procrustes, closed form, differentiable).
    Why: a dense field (a free vector per 2x2 pixels) can bend a pushed T, and repeated over
    autoregressive steps it did (docs/history.md, stages 5-6); a layer cannot bend. Why fitted, not
    predicted, motions: with K motions read from the bottleneck, `s` learned K near-constant
    shifts and picked among them per pixel, a dense field again (soft masks: a blend; hard ones:
    a dither; 2-core CPU runs of 541 and 250 steps, docs/history.md). A fitted motion is the mean
    motion of its pixels, so only a layer that holds one rigid body fits it well. The fit's
    weights are the hard masks without gradient: with it (how moving a pixel to another layer
    shifts the layers' fits) the gradient norm of `s` was 6-300 instead of 0.5-0.9, and under
    clipping the loss doubled in 30 steps and the IDM's error rose 2.5 -> 3.6 px (runs/s13_eps);
    the masks learn only which layer's motion suits each pixel (straight-through)."""

    def __init__(self, c_full: int, k: int, dense_rest: bool = False):
        super().__init__()
        self.mask = conv3(c_full, k)
        # DVAConfig.body_masks: layer 0 is the rest of the scene and keeps the dense field, so the
        # pixels a body uncovers are filled from the nearby background as the dense head learned
        # to (pinned to zero motion instead, the true next-frame masks left ghost T's there: the
        # stage-9 package with them, 1-step PSNR 31.0 vs 36.6 dB, docs/history.md); layers 1-2 (T, disc)
        # move rigidly. Equal logits at init put every pixel in layer 0 (argmax ties go to the
        # first): the model starts as the dense-head model it was --init from.
        self.dense_rest = dense_rest
        if dense_rest:
            nn.init.zeros_(self.mask.weight)
            nn.init.zeros_(self.mask.bias)

    @staticmethod
    def _hard(logits):
        """One-hot of the argmax over dim 1, ties to the first layer. (argmax over a strided dim
        + one_hot took 3.0 ms for (1, 3, 96, 96) on one CPU core, 10% of a plan; this 0.3 ms.)"""
        hit = logits == logits.amax(1, keepdim=True)
        return (hit & (hit.cumsum(1) == 1)).to(logits.dtype)

    @classmethod
    def _one_hot(cls, logits):
        soft = logits.softmax(1)
        return cls._hard(logits) + (soft - soft.detach())  # forward: one layer per pixel; backward: the softmax's

    @staticmethod
    def _centred(n: int, size: int, device):
        """Centres of n cells across a size-px frame, in px relative to the frame centre: (x (1, 1, 1, n), y (1, 1, n, 1))."""
        c = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * (size / n) - size / 2
        return c.view(1, 1, 1, n), c.view(1, 1, n, 1)

    def forward(self, h, flow, size: int):
        """h: decoder features (B, c_full, n, n); flow: the dense displacement (B, 2, n, n) in px
        of the full frame (size x size). Returns the displacement (B, 2, size, size) in px: each
        pixel p samples the frame at R_k p + t_k, with k its layer, p relative to the frame centre;
        the layers' one-hot masks (B, K, size, size) (straight-through), the rigid layers'
        motions (B, K - r, 4) as (cos, sin, tx, ty), r = 1 with dense_rest else 0, and the mask
        logits (B, K, n, n)."""
        logits = self.mask(h).float()
        n = flow.shape[-1]
        w = self._hard(logits)  # (B, K, n, n): the fit's weights (hard, no gradient: see above)
        px, py = self._centred(n, size, h.device)
        qx, qy = px + flow[:, 0:1].float(), py + flow[:, 1:2].float()  # where each cell samples from
        sw = w.sum((2, 3)).clamp(min=1.0)  # pixels per layer; an empty layer's fit must not divide by ~0

        def mean(v):
            return (w * v).sum((2, 3)) / sw  # (B, K)

        mpx, mpy, mqx, mqy = mean(px), mean(py), mean(qx), mean(qy)
        ax, ay, bx, by = px - _at(mpx), py - _at(mpy), qx - _at(mqx), qy - _at(mqy)
        ang = torch.atan2((w * (ax * by - ay * bx)).sum((2, 3)), (w * (ax * bx + ay * by)).sum((2, 3)) + 1.0)  # px^2
        cos, sin = torch.cos(ang), torch.sin(ang)  # (B, K)
        tx, ty = mqx - (cos * mpx - sin * mpy), mqy - (sin * mpx + cos * mpy)  # q = R p + t
        m = self._one_hot(F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False))
        r = 1 if self.dense_rest else 0  # layers from r on move rigidly
        motion = torch.stack([cos, sin, tx, ty], dim=-1)[:, r:]  # (B, K - r, 4)
        return self.field(m, motion, flow), m, motion, logits

    def field(self, m, motion, flow):
        """The displacement (B, 2, size, size) in px of layers m (B, K, size, size) moved by
        motion (B, K - r, 4) (cos, sin, tx, ty); with dense_rest layer 0 moves by the dense
        field flow (B, 2, n, n), upsampled as warp() would."""
        size = m.shape[-1]
        Px, Py = self._centred(size, size, m.device)
        cos, sin, tx, ty = (_at(v) for v in motion.unbind(-1))  # (B, K - r, 1, 1) each
        dx = cos * Px - sin * Py + tx - Px  # (B, K - r, size, size)
        dy = sin * Px + cos * Py + ty - Py
        if self.dense_rest:
            up = F.interpolate(flow.float(), size=(size, size), mode="bilinear", align_corners=False)
            dx, dy = torch.cat([up[:, 0:1], dx], 1), torch.cat([up[:, 1:2], dy], 1)
        return torch.stack([(m * dx).sum(1), (m * dy).sum(1)], dim=1)


def _at(v):
    return v[..., None, None]


def compose(first, then):
    """Rigid motions (..., 4) as (cos, sin, tx, ty), each mapping a pixel p (px from the frame
    centre) to R p + t: the motion p -> first(then(p)). Used by anchored dreams: `then` takes a
    dreamed frame to the previous one, `first` the previous one to the last real frame."""
    c1, s1, x1, y1 = first.unbind(-1)
    c2, s2, x2, y2 = then.unbind(-1)
    return torch.stack([c1 * c2 - s1 * s2, s1 * c2 + c1 * s2, c1 * x2 - s1 * y2 + x1, s1 * x2 + c1 * y2 + y1], dim=-1)


def warp(frame, flow, mode: str = "bilinear"):
    """Backward warp: out(p) = frame(p + flow(p)), sampled bilinearly or bicubically (mode).
    frame (B, C, H, W); flow (B, 2, h, w) displacements (dx, dy) in pixels of the full frame,
    upsampled bilinearly to H x W. Bicubic overshoots at edges; the result is not clamped here
    (the sampler clamps its output)."""
    B, _, H, W = frame.shape
    flow = flow.float()
    if flow.shape[-2:] != (H, W):  # (RigidLayers' field is already full size)
        flow = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False)
    ys = (torch.arange(H, device=frame.device, dtype=torch.float32) + 0.5) * (2 / H) - 1
    xs = (torch.arange(W, device=frame.device, dtype=torch.float32) + 0.5) * (2 / W) - 1
    gx = xs.view(1, 1, W) + flow[:, 0] * (2 / W)
    gy = ys.view(1, H, 1) + flow[:, 1] * (2 / H)
    grid = torch.stack([gx, gy], dim=-1)  # (B, H, W, 2) in grid_sample's (x, y) order
    out = F.grid_sample(frame.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    return out.to(frame.dtype)
