"""The Direct Video-Action model: encoder -> block-causal transformer -> flow-matching U-Net.

Training (`forward` / `loss`) uses context amortization: a noise-free sequence of L frames is
encoded and run through the transformer once, and the next-frame loss is taken at every
position, each with its own noise level (like next-token prediction).

Inference (the contract the controller builds on):
    cache = model.init_cache(B, device)
    ctx = model.observe(cache, frame)              # frame (B, 3, 96, 96) in [-1, 1]
    x_next = model.sample(ctx, action, steps=4)    # (B, 3, 96, 96) in [-1, 1]
    mark = cache.mark(); ...; cache.rollback(mark)  # predicted frames are scratch
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

import dvakern
from . import frames as fr
from .config import DVAConfig
from .encoder import Encoder
from .transformer import CausalTransformer, RingCache
from .unet import Context, DecoderOut, FlowUNet


# A pixel whose true motion is over this many px moved (the flow loss weighs it up; dva.pusht.flow.moving_bodies).
MOVED_PX = 0.05

# The velocity (x_hat - x_tau) / (1 - tau) is capped near tau = 1 (never reached by the sampler,
# whose last evaluation is at tau = 1 - 1/steps).
_MIN_1_TAU = 1e-2


class DVA(nn.Module):
    def __init__(self, cfg: DVAConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.transformer = CausalTransformer(cfg)
        self.decoder = FlowUNet(cfg)
        self._record: list | None = None  # see record()
        # DVAConfig.action_aux: training only (the policy reads actions off dreams, not off this)
        n = cfg.d_model * cfg.tokens_per_frame
        self.action_head = (nn.Sequential(nn.Linear(n, 512), nn.SiLU(), nn.Linear(512, 2 * cfg.intent_steps))
                            if cfg.action_aux else None)
        # DVAConfig.intent_maps: two stride-2 convs on the encoder's second-level maps of frames t-1 and
        # t, added into the head's hidden layer; the last layer starts at zero (the head as it was)
        self.intent_conv = None
        if cfg.intent_maps:
            c, s = cfg.enc_ch[1], cfg.img // 16
            self.intent_conv = nn.Sequential(nn.Conv2d(2 * c, 96, 3, 2, 1), nn.SiLU(), nn.Conv2d(96, 128, 3, 2, 1),
                                             nn.SiLU(), nn.Flatten(), nn.Linear(128 * s * s, 512))
            nn.init.zeros_(self.intent_conv[-1].weight), nn.init.zeros_(self.intent_conv[-1].bias)

    # ---- conversions (one home: dva.model.frames) ------------------------------------------
    @staticmethod
    def from_frames(frames: torch.Tensor) -> torch.Tensor:
        return fr.from_frames(frames)

    @staticmethod
    def to_frames(x: torch.Tensor) -> torch.Tensor:
        return fr.to_frames(x)

    # ---- training: context amortization ----------------------------------------------------
    def context(self, x):
        """x: (B, T, 3, H, W) -> Context for every position (B*T, ...), frame-major per sample."""
        B, T = x.shape[:2]
        N = self.cfg.tokens_per_frame
        tok, feats = self.encoder(x.flatten(0, 1))  # (B*T, N, D)
        out = self.transformer(tok.reshape(B, T * N, -1), N)  # (B, T*N, D)
        return Context(out.view(B * T, N, -1), feats, x.flatten(0, 1))

    def forward(self, x, actions, generator=None, flow=None, labels=None, action_reader=None):
        """Flow-matching loss. x: (B, L, 3, H, W) in [-1, 1]; actions: (B, L, 2) pixel units
        (actions[:, t] leads from frame t to t+1). Positions 0..L-2 each predict their next frame
        with an independent noise level. The loss is on the predicted clean frame (x-prediction:
        the velocity loss weighted by (1 - tau)^2, which keeps it bounded near tau = 1).
        Optional per-pixel targets, which a simulator source can give (dva.pusht.flow computes them
        from PushT states): flow (B, L-1, 2, H, W) the true motion in px from each frame to the next,
        needed only by cfg.flow_loss; labels (B, L-1, H, W) long, which layer (0 the static scene,
        1.. the moving bodies) each pixel of the next frame shows, needed only by cfg.body_masks.
        action_reader(prev, cur, nxt) -> (n, 2) actions in [-1, 1] (a frozen IDM), needed only by
        cfg.policy_loss. Returns the scalar loss."""
        B, L = x.shape[:2]
        if L < 2:
            raise ValueError(f"training needs sequences of at least 2 frames, got L={L}")
        dev = x.device
        clean = x[:, :-1]  # the last frame is only a target
        seen, anchor = clean, None
        if self.training and self.cfg.self_forcing > 0:
            seen, anchor = self._self_force(clean, actions, generator)
        ctx = self.context(seen)
        if anchor is not None:  # swapped-in dreams are predicted from as dream() would
            ctx.anchor, ctx.motion = anchor[0].flatten(0, 1), anchor[1].flatten(0, 1)
        target = x[:, 1:].flatten(0, 1)  # (B*(L-1), 3, H, W)
        act = fr.norm_action(actions[:, :-1].flatten(0, 1), self.cfg.action_range)  # (B*(L-1), 2)
        prev, prev_mask = self.prev_actions(actions[:, :-1])
        n = target.shape[0]
        tau = torch.rand(n, device=dev, generator=generator)
        noise = torch.randn(target.shape, device=dev, generator=generator, dtype=target.dtype)
        keep = torch.rand(n, device=dev, generator=generator) >= self.cfg.action_dropout
        t4 = tau.view(-1, 1, 1, 1)
        x_tau = (1 - t4) * noise + t4 * target
        out = self.decode(x_tau, tau, ctx, act, keep, prev, prev_mask)
        x_hat = out.x_hat
        # Pixels that change between frame t and t+1 (the disc, a pushed block) are ~1% of a
        # frame; weighting them up keeps the loss from being all "copy the background".
        moved = ((target - clean.flatten(0, 1)).abs().amax(dim=1, keepdim=True) > 0.1).float()  # (n, 1, H, W)
        w = 1.0 + self.cfg.motion_weight * moved
        loss = self._pixel_loss(x_hat, target, w)
        if self.cfg.warp_loss:  # the warped frame alone must explain the motion too
            loss = loss + self.cfg.warp_loss * self._pixel_loss(out.warped, target, w)
        if self.cfg.flow_loss:
            loss = loss + self.cfg.flow_loss * self._flow_loss(out.dense, flow)
        if self.cfg.body_masks:
            loss = loss + self.cfg.body_masks * self._mask_loss(out.logits, labels)
        if self.cfg.policy_loss:
            loss = loss + self.cfg.policy_loss * self._policy_loss(seen, x_hat, act, ~keep, tau, action_reader)
        if self.action_head is not None:  # the context of frame t must hold the actions taken out of it
            loss = loss + self.cfg.action_aux * self._intent_loss(ctx, actions)
        return loss

    def decode(self, x_tau, tau, ctx: Context, action=None, action_mask=None, prev=None, prev_mask=None) -> DecoderOut:
        """One decoder evaluation (actions in [-1, 1]); recorded while record() is active."""
        out = self.decoder(x_tau, tau, ctx, action, action_mask, prev, prev_mask)
        if self._record is not None:
            self._record.append(out)
        return out

    @contextmanager
    def record(self):
        """Collects the DecoderOut of every decoder evaluation (training forward, each sampler step
        of sample/dream) while active, in order: how validation reads the warp head's
        displacement and the body masks without hooking submodules by name."""
        outs: list[DecoderOut] = []
        self._record = outs
        try:
            yield outs
        finally:
            self._record = None

    def _policy_loss(self, seen, x_hat, act, free, tau, action_reader):
        """L1 between the action read off each freely predicted frame (frames t-1, t as the model
        saw them; frame t again at t = 0) and the action the data took, weighted by 1 - tau (at
        tau -> 1 the prediction has seen the target)."""
        if action_reader is None:
            raise ValueError("policy_loss needs an action_reader (the IDM: train with --model both)")
        if not free.any():
            return x_hat.sum() * 0.0
        prev = torch.cat([seen[:, :1], seen[:, :-1]], dim=1).flatten(0, 1)  # (n, 3, H, W) frame t-1
        cur = seen.flatten(0, 1)
        read = action_reader(prev[free], cur[free], x_hat[free])  # (f, 2) in [-1, 1]
        w = (1 - tau[free]).view(-1, 1)
        return ((read.float() - act[free]).abs() * w).sum() / (w.sum() * 2).clamp_min(1e-6)

    def _head(self, ctx: Context, prev_maps=None):
        """The action head on a context (B, ...) -> (B, 2K) in [-1, 1]. With cfg.intent_maps it also
        reads the encoder's second-level maps of the context's frame and of prev_maps (B, c, h, w),
        the frame before (None: the frame itself, as at an episode's first frame)."""
        if self.intent_conv is None:
            return self.action_head(ctx.tokens.flatten(1))
        cur = ctx.feats[1]
        maps = torch.cat([cur if prev_maps is None else prev_maps, cur], dim=1)
        h = self.action_head[0](ctx.tokens.flatten(1)) + self.intent_conv(maps)
        return self.action_head[2](self.action_head[1](h))

    def _intent_loss(self, ctx, actions):
        """L1 of the action head's a_t .. a_{t+K-1} (K = cfg.intent_steps) off the context of each
        frame t against the data's, over the actions the sequence holds (actions (B, L, 2) px)."""
        B, L = actions.shape[:2]
        K = self.cfg.intent_steps
        prev = None
        if self.intent_conv is not None:  # frame t-1's maps within each sequence (frame 0: its own)
            m = ctx.feats[1].view(B, L - 1, *ctx.feats[1].shape[1:])
            prev = torch.cat([m[:, :1], m[:, :-1]], dim=1).flatten(0, 1)
        pred = self._head(ctx, prev).float().view(B, L - 1, K, 2)
        act = fr.norm_action(actions, self.cfg.action_range)  # (B, L, 2)
        idx = torch.arange(L - 1, device=act.device)[:, None] + torch.arange(K, device=act.device)  # (L-1, K)
        valid = (idx < L).float()[None, :, :, None]  # a_{t+k} past the sequence's last action is not known
        err = (pred - act[:, idx.clamp(max=L - 1)]).abs() * valid
        return err.sum() / (valid.sum() * B * 2)

    def prev_actions(self, actions):
        """The action executed into each frame of a sequence, for actions (B, T, 2) px leading out
        of frames 0..T-1: ((B*T, 2) in [-1, 1], (B*T,) mask, False at frame 0: unknown)."""
        B, T = actions.shape[:2]
        prev = torch.cat([actions[:, :1], actions[:, :-1]], dim=1)  # (B, T, 2); frame 0's is masked
        mask = (torch.arange(T, device=actions.device) > 0).expand(B, T)
        return fr.norm_action(prev.flatten(0, 1), self.cfg.action_range), mask.flatten()

    def _pixel_loss(self, pred, target, w):
        err = pred.float() - target.float()
        err = err.abs() if self.cfg.loss == "l1" else err**2
        return (err * w).sum() / (w.sum() * 3)

    def _flow_loss(self, disp, flow):
        """L1 (px) of the dense displacement against the true motion, at the head's resolution;
        pixels that moved weigh 1 + motion_weight, as in the image loss (a translating body's
        interior changes no colour, yet its motion is what keeps it rigid)."""
        if flow is None:  # (DVAConfig already refuses flow_loss without the warp head)
            raise ValueError("flow_loss needs the true motion of the training frames (flow=...: a source with states)")
        true = flow.flatten(0, 1).float()  # (n, 2, H, W) px
        w = 1.0 + self.cfg.motion_weight * (true.norm(dim=1, keepdim=True) > MOVED_PX).float()
        k = self.cfg.img // disp.shape[-1]
        true, w = F.avg_pool2d(true, k), F.avg_pool2d(w, k)
        return ((disp.float() - true).abs() * w).sum() / (w.sum() * 2)

    def _mask_loss(self, logits, labels):
        """Cross-entropy of the rigid layers' masks against which body each pixel of the next frame
        shows (the label at each mask cell's centre pixel). The moving bodies are few pixels
        (PushT: the T and the disc, ~6% of a frame); weighting them up as the flow loss does keeps
        the masks from settling on "all static"."""
        if labels is None:
            raise ValueError("body_masks needs the body labels of the training frames (labels=...: a source with states)")
        lab = labels.flatten(0, 1)  # (n, H, W)
        k = self.cfg.img // logits.shape[-1]
        lab = lab[:, k // 2::k, k // 2::k]  # (n, h, w)
        w = 1.0 + self.cfg.motion_weight * (lab > 0).float()
        ce = F.cross_entropy(logits.float(), lab, reduction="none")
        return (ce * w).sum() / w.sum()

    @torch.no_grad()
    def _self_force(self, clean, actions, generator=None):
        """Context frames (B, T, 3, H, W) with each frame after the first replaced, with
        probability cfg.self_forcing, by the model's own 1-step prediction of it (a no-grad
        teacher-forced pass: context amortization gives every prediction at once). With
        cfg.self_forcing_depth = K the pass runs K times, each on the previous pass's frames with
        the same swap mask and noise, so a run of <= K swapped frames is the exact autoregressive
        rollout of them. The targets of the loss stay the real frames. Returns (frames, anchors):
        with cfg.warp_anchor, anchors = (the last real frame at or before each position
        (B, T, 3, H, W), the rigid layers' motions from each frame to it (B, T, K - 1, 4)), so the
        rollout is the one dream() makes; else None."""
        B, T = clean.shape[:2]
        if T < 2:
            return clean, None
        act = actions[:, : T - 1].flatten(0, 1)
        noise = torch.randn((B * (T - 1), *clean.shape[2:]), device=clean.device, generator=generator)
        swap = torch.rand(B, T - 1, 1, 1, 1, device=clean.device, generator=generator) < self.cfg.self_forcing
        anchored = self.cfg.warp_anchor
        if anchored:
            real = torch.cat([torch.ones_like(swap[:, :1]), ~swap], 1).view(B, T)
            idx = torch.arange(T, device=clean.device) * real  # the last real frame at or before t
            last = idx.cummax(1).values
            frames = clean[torch.arange(B, device=clean.device)[:, None], last]  # (B, T, 3, H, W)
            ident = torch.tensor([1.0, 0.0, 0.0, 0.0], device=clean.device).expand(B, T, 2, 4)
            motion = ident
        seen = clean
        for _ in range(self.cfg.self_forcing_depth):
            ctx = self.context(seen[:, :-1])
            if anchored:
                ctx.anchor, ctx.motion = frames[:, :-1].flatten(0, 1), motion[:, :-1].flatten(0, 1)
            pred, mot = self._solve(ctx, act, 1, noise, None, self.prev_actions(actions[:, : T - 1]))
            pred = pred.view(B, T - 1, *clean.shape[2:]).to(clean.dtype)
            seen = torch.cat([clean[:, :1], torch.where(swap, pred, clean[:, 1:])], dim=1)
            if anchored:
                mot = mot.float().view(B, T - 1, 2, 4)
                motion = torch.cat([ident[:, :1], torch.where(swap.view(B, T - 1, 1, 1), mot, ident[:, 1:])], 1)
        return seen, ((frames, motion) if anchored else None)

    # ---- inference --------------------------------------------------------------------------
    def init_cache(self, batch_size: int, device, dtype=torch.float32) -> RingCache:
        return self.transformer.init_cache(batch_size, device, dtype)

    def observe(self, cache: RingCache, frame: torch.Tensor) -> Context:
        """Encode one frame (B, 3, H, W), run one transformer step through the ring cache
        (appending it) and return the context for predicting the next frame."""
        tok, feats = self.encoder(frame)
        return Context(self.transformer.step(tok, cache), feats, frame)

    def prefill(self, cache: RingCache, frames: torch.Tensor) -> Context:
        """Observe T frames (B, T, 3, H, W) at once (empty cache). Returns the last frame's context."""
        B, T = frames.shape[:2]
        N = self.cfg.tokens_per_frame
        tok, feats = self.encoder(frames.flatten(0, 1))  # (B*T, N, D)
        out = self.transformer.prefill(tok.reshape(B, T * N, -1), cache, N)  # (B, T*N, D)
        last = [f.view(B, T, *f.shape[1:])[:, -1] for f in feats]
        return Context(out.view(B, T, N, -1)[:, -1], last, frames[:, -1])

    def intent(self, ctx: Context, prev: Context | None = None) -> torch.Tensor:
        """The actions the model expects out of the context's frame and the K - 1 after it, read
        by the action head (DVAConfig.action_aux, intent_steps = K): (B, K, 2) in the data's
        units. What a free dream can be conditioned on (PlannerConfig.free_action='intent'), so
        that it renders one future, not the median of all of them. prev: the context of the frame
        before (real or dreamed), which a head with cfg.intent_maps reads too; None: none yet."""
        if self.action_head is None:
            raise ValueError("this model has no action head (DVAConfig.action_aux = 0): it has no intent to read")
        a = self._head(ctx, None if prev is None else prev.feats[1]).view(-1, self.cfg.intent_steps, 2)
        return fr.denorm_action(a, self.cfg.action_range)

    def velocity(self, x_tau, tau, ctx: Context, action=None):
        """Flow velocity at (x_tau, tau (B,)); action in pixel units (B, 2) or None."""
        return self._velocity(x_tau, tau, ctx, action)[0]

    def _velocity(self, x_tau, tau, ctx: Context, action=None, prev=None):
        """prev: None (unknown), an action (B, 2) in pixel units, or ((B, 2) in [-1, 1], (B,) mask)."""
        a = None if action is None else fr.norm_action(action, self.cfg.action_range)
        if prev is not None and not isinstance(prev, tuple):
            prev = (fr.norm_action(prev, self.cfg.action_range), None)
        p, pm = (None, None) if prev is None else prev
        out = self.decode(x_tau, tau, ctx, a, None, p, pm)
        return (out.x_hat - x_tau) / (1 - tau).clamp_min(_MIN_1_TAU).view(-1, 1, 1, 1), out.motion

    def sample(self, ctx: Context, action=None, steps: int | None = None, noise=None, generator=None,
               prev_action=None):
        """Few-step Euler ODE solve tau 0 -> 1. action: (B, 2) pixel units being executed between
        the observed frame and the next one, or None; prev_action: (B, 2) pixel units executed into
        the observed frame, or None (unknown), or per sample as prev_actions() gives them (read only
        with DVAConfig.prev_action). Returns (B, 3, H, W) in [-1, 1]."""
        return self._solve(ctx, action, steps, noise, generator, prev_action)[0]

    def _solve(self, ctx, action, steps, noise, generator, prev=None):
        steps = self.cfg.sampler_steps if steps is None else int(steps)
        if not 1 <= steps <= 64:
            raise ValueError(f"sampler steps must be in [1, 64], got {steps}")
        B = ctx.tokens.shape[0]
        dev = ctx.tokens.device
        if noise is None:
            noise = torch.randn((B, 3, self.cfg.img, self.cfg.img), device=dev, generator=generator)
        x = noise
        taus = torch.linspace(0.0, 1.0, steps + 1, device=dev)
        for i in range(steps):
            tau = taus[i].expand(B)
            v, motion = self._velocity(x, tau, ctx, action, prev)
            x = dvakern.flow_step(x, v, taus[i], taus[i + 1])
        return x.clamp(-1, 1), motion  # (the motion of the last evaluation, the one that made x)

    def dream(self, cache: RingCache, ctx: Context, action=None, steps: int | None = None, noise=None,
              generator=None, observe: bool = True, prev_action=None):
        """One dreamed step: sample() the next frame and, with observe, observe() it (a scratch
        entry in cache: mark()/rollback() around dreams). Returns (frame, its context or None).
        With cfg.warp_anchor the context carries the last real frame and the T's and disc's
        motions composed since it, so the next step resamples the real frame, not this dream."""
        x, motion = self._solve(ctx, action, steps, noise, generator, prev_action)
        if not observe:
            return x, None
        nxt = self.observe(cache, x)
        if self.cfg.warp_anchor and motion is not None:
            nxt.anchor = ctx.frame if ctx.anchor is None else ctx.anchor
            nxt.motion = motion
        return x, nxt


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
