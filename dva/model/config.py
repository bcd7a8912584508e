"""Model configs: one dataclass, named presets (`tiny` for tests, `s` the CPU-real-time default,
`m` a GPU preset under 30M parameters including the IDM).

Sizes of `s` are chosen from measured CPU latency (2-core CPU, fp32, batch 1; docs/model.md):
the decoder works at 48x48 (space-to-depth), where every sampler step is the dominant cost.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class DVAConfig:
    name: str = "s"
    img: int = 96  # frames are img x img RGB; the decoder works at img/2 via space-to-depth
    # encoder: channels per level at 48, 24, 12 px; tokens come from a token_grid x token_grid pool
    enc_ch: tuple[int, ...] = (32, 64, 128)
    token_grid: int = 4  # N = token_grid**2 tokens per frame
    # causal transformer over frames
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    window: int = 8  # ring KV cache size W (frames); training with L <= W+1 never exceeds it
    rope_base: float = 10000.0
    # flow-matching U-Net decoder: channels per level at 48, 24, 12 px, res blocks per level
    dec_ch: tuple[int, ...] = (32, 64, 128)
    dec_blocks: int = 1
    # warp head: the decoder also predicts a displacement field and starts from frame t warped by
    # it (x_hat = warp(frame t, flow) + residual), so a moved T is the old T resampled, not
    # repainted; a zero-initialised head makes the model start as the residual-only one
    warp: bool = False
    # 0: the warp head is a dense displacement field; K > 0: that field made piecewise rigid, each
    # pixel in one of K layers moved by the rotation + shift fitted to it (unet.RigidLayers; tried
    # as stage 7 and not shipped: docs/history.md)
    warp_layers: int = 0
    # how the warp resamples frame t: 'bilinear' or 'bicubic'. Why bicubic: in a dream every frame
    # is the previous dream resampled, and bilinear sampling blurs at each step: warping held-out
    # expert frames by their *true* motion 8 times left the rigid-T IoU at 0.930 with bilinear,
    # 0.961 with bicubic (`python -m dva.pusht.warp_ceiling`, docs/history.md)
    warp_interp: str = "bilinear"
    # anchored dreams (inference; needs body_masks): the T and disc layers of a dreamed frame
    # sample the last *real* frame by their motions composed since it, instead of the previous
    # dream, so a dream resamples the T once, not once per step. Why: re-warping the previous
    # dream 8 times caps the step-8 rigid-T IoU at 0.930 (bilinear) even with the true motion;
    # one warp by the composed true motion reaches 0.967 (`python -m dva.pusht.warp_ceiling`)
    warp_anchor: bool = False
    # weight of a cross-entropy loss that makes 3 rigid layers the three bodies of a frame (layer
    # 0 the static scene, 1 the T, 2 the disc: dva.pusht.flow.body_labels of the next frame's
    # state); with it layer 0 keeps the dense field (the static scene and the pixels a body
    # uncovers) and only the T and the disc move rigidly. Unsupervised layers split the T in two
    # and moved the background as a whole (stage 7)
    body_masks: float = 0.0
    # weight of a second loss on the warped frame alone (no residual): it makes the displacement
    # field explain the motion (without it the residual did all the work: `s`, 2-core CPU, 309
    # fine-tuning steps, 0.14 px on the T vs 0.31 px off it, the same blur; docs/history.md)
    warp_loss: float = 0.0
    # weight of an L1 loss (in pixels) between the warp head's dense displacement and the true
    # motion of the T and the disc, computed from the training sequence's states
    # (dva.pusht.flow): trained through the image loss alone the head moved the pushed T by under
    # half its true motion and the residual repainted it (docs/history.md, stages 5 and 8)
    flow_loss: float = 0.0
    cond_dim: int = 256  # width of the (tau, context, action) modulation vector
    motion_weight: float = 20.0  # extra loss weight on pixels that change between t and t+1
    action_dropout: float = 0.25  # P(action hidden) in training, so sampling without one works
    # weight of the free dream's action loss (training only): where the action is hidden, the IDM
    # (frozen: no gradient reaches its weights) reads the predicted next frame and its action is
    # compared (L1, [-1, 1] units, weighted by 1 - tau) with the one the data took. Why: the free
    # dream *is* the policy, and a pixel loss says nothing useful about a disc dreamed a few pixels
    # from where the expert put it (two ~3 px blobs that do not overlap: the same loss at any
    # distance), so it learns to hedge ("stay", or a fading disc); read through the IDM the error
    # is a distance in the action space, with a gradient that points to the expert's choice
    policy_loss: float = 0.0
    # the decoder also gets the action executed into frame t (a_{t-1}; a learned "unknown" at the
    # start of an episode). Why: the pointer leads the disc by ~36 px (DESIGN.md 3), so the frames
    # alone hide where it is, while the expert moves it at a nearly constant velocity: on held-out
    # expert episodes continuing the known actions' velocity misses the next action by 8.5 px, the
    # free dream without them by 24-27 px (docs/policy.md). Zero-initialised: adding it changes nothing
    prev_action: bool = False
    # context noise augmentation (training only): each context frame gets Gaussian noise of a
    # std drawn from U(0, ctx_noise), so the model learns to predict from imperfect frames (its
    # own dreams, in autoregressive rollouts) instead of amplifying their errors
    ctx_noise: float = 0.0
    # self forcing (training only; parallel scheduled sampling): a no-grad pass predicts every
    # next frame from the context (1 sampler step, as shipped), and each context frame after the
    # first is replaced by the model's own prediction of it with this probability, so the model
    # learns to turn its own blurred dreams back into a sharp next frame
    self_forcing: float = 0.0
    # passes of that no-grad prediction; the swapped frames of pass k are predicted from the
    # context of pass k-1 (same swap mask, same noise), so a run of up to this many consecutive
    # swapped frames is exactly the model's own autoregressive rollout of them (Jacobi iteration
    # of the causal rollout): with 1 the model only ever sees 1-step errors, not compounded ones
    self_forcing_depth: int = 1
    loss: str = "mse"  # 'mse' (conditional mean: blurs what is uncertain) or 'l1' (median: stays sharp)
    sampler_steps: int = 4
    # inverse dynamics model: 3 frames (t-1, t, t+1) -> action t
    idm_ch: tuple[int, ...] = (32, 64, 128, 128)
    groups: int = 8  # GroupNorm groups everywhere

    def __post_init__(self):
        self.enc_ch = tuple(int(c) for c in self.enc_ch)
        self.dec_ch = tuple(int(c) for c in self.dec_ch)
        self.idm_ch = tuple(int(c) for c in self.idm_ch)
        if self.img % 16:
            raise ValueError(f"img must be a multiple of 16, got {self.img}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must split into n_heads={self.n_heads} even-sized heads")
        if len(self.enc_ch) != len(self.dec_ch):
            raise ValueError("enc_ch and dec_ch need the same number of levels (the encoder feeds skips)")
        for c in self.enc_ch + self.dec_ch + self.idm_ch:
            if c % self.groups:
                raise ValueError(f"channel count {c} is not divisible by groups={self.groups}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 1 <= self.sampler_steps <= 64:
            raise ValueError(f"sampler_steps must be in [1, 64], got {self.sampler_steps}")
        if not 0 <= self.ctx_noise <= 1:
            raise ValueError(f"ctx_noise must be in [0, 1], got {self.ctx_noise}")
        if not 0 <= self.self_forcing <= 1:
            raise ValueError(f"self_forcing must be in [0, 1], got {self.self_forcing}")
        if not 1 <= self.self_forcing_depth <= 16 or (self.self_forcing_depth > 1 and not self.self_forcing):
            raise ValueError(f"self_forcing_depth must be in [1, 16] and > 1 only with self_forcing > 0, got "
                             f"{self.self_forcing_depth} (self_forcing={self.self_forcing})")
        if self.warp_loss < 0 or (self.warp_loss and not self.warp):
            raise ValueError(f"warp_loss must be >= 0 and needs warp=True, got {self.warp_loss} (warp={self.warp})")
        if self.flow_loss < 0 or (self.flow_loss and not self.warp):
            raise ValueError(f"flow_loss must be >= 0 and needs warp=True, got {self.flow_loss} (warp={self.warp})")
        if not 0 <= self.warp_layers <= 16 or (self.warp_layers and not self.warp):
            raise ValueError(f"warp_layers must be in [0, 16] and > 0 only with warp=True, got {self.warp_layers} "
                             f"(warp={self.warp})")
        if self.body_masks < 0 or (self.body_masks and self.warp_layers != 3):
            raise ValueError(f"body_masks must be >= 0 and needs warp_layers=3 (static scene, T, disc), got "
                             f"{self.body_masks} (warp_layers={self.warp_layers})")
        if self.warp_anchor and not self.body_masks:
            raise ValueError("warp_anchor needs body_masks > 0 (layers 1 and 2 must be the T and the disc)")
        if self.warp_interp not in WARP_INTERPS:
            raise ValueError(f"warp_interp must be one of {WARP_INTERPS}, got {self.warp_interp!r}")
        if not 0 <= self.action_dropout <= 1:
            raise ValueError(f"action_dropout must be in [0, 1], got {self.action_dropout}")
        if self.policy_loss < 0 or (self.policy_loss and not self.action_dropout):
            raise ValueError(f"policy_loss must be >= 0 and needs action_dropout > 0 (it trains the free dream), got "
                             f"{self.policy_loss} (action_dropout={self.action_dropout})")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {self.loss!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.token_grid**2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DVAConfig":
        d = {k: v for k, v in d.items() if k not in RETIRED}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DVAConfig fields {unknown}")
        return cls(**d)


# fields that older checkpoints' JSON carries and that no longer configure a model: dropped on load.
# backend: the dvakern kernel switch is the process's (dvakern.set_backend, DVA_BACKEND, or
# `python -m dva.train --backend`), not a model's: building a model must not change it.
RETIRED = ("backend",)

WARP_INTERPS = ("bilinear", "bicubic")  # DVAConfig.warp_interp: grid_sample modes the warp may use

PRESETS: dict[str, DVAConfig] = {
    # seconds on CPU: for tests
    "tiny": DVAConfig(name="tiny", enc_ch=(16, 16, 32), token_grid=2, d_model=32, n_layers=2, n_heads=2,
                      window=4, dec_ch=(16, 16, 32), cond_dim=32, idm_ch=(16, 16, 32, 32), groups=4),
    # the default: real time on 2 CPU cores at 4 sampler steps
    "s": DVAConfig(name="s"),
    # GPU preset, < 30M parameters including the IDM
    "m": DVAConfig(name="m", enc_ch=(64, 128, 256), token_grid=6, d_model=384, n_layers=6, n_heads=6,
                   window=16, dec_ch=(64, 128, 256), dec_blocks=2, cond_dim=512, idm_ch=(32, 64, 128, 256),
                   groups=16),
}


def preset(name: str, **overrides) -> DVAConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
