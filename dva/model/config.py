"""Model configs: one dataclass whose fields carry their --help (dva.train's command line is
derived from them), and named presets: `tiny` for tests, `s` exactly what ships (the packaged
model's config), `m` the same recipe as a GPU preset under 30M parameters including the IDM.

Sizes of `s` are chosen from measured CPU latency (2-core CPU, fp32, batch 1; docs/model.md):
the decoder works at 48x48 (space-to-depth), where every sampler step is the dominant cost.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


# What conditions a frame dreamed past the committed actions (DVAConfig.free_action, dva.policy.PlannerConfig)
FREE_ACTIONS = ("none", "prev", "intent")


def opt(default, help: str, **cli):
    """A config field declared once with its --help text (dva.train derives its command line from
    the fields of DVAConfig and TrainConfig); cli may add argparse keywords such as choices."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class DVAConfig:
    name: str = opt("s", "preset name (informational)", cli=False)
    img: int = opt(96, "frame side in px; the decoder works at img/2 (space-to-depth). Data that stores "
                       "frames sets it")
    action_range: tuple[float, ...] = opt((0.0, 512.0), "(low, high) of both action coordinates in the data's units, "
                                                         "mapped to [-1, 1] (PushT: px); a LeRobot source sets it "
                                                         "from its stats")
    # encoder: channels per level at 48, 24, 12 px; tokens come from a token_grid x token_grid pool
    enc_ch: tuple[int, ...] = opt((32, 64, 128), "encoder channels per level (img/2, img/4, img/8)")
    token_grid: int = opt(4, "tokens per frame = token_grid**2 (pooled encoder features)")
    # causal transformer over frames
    d_model: int = opt(192, "transformer width")
    n_layers: int = opt(4, "transformer layers")
    n_heads: int = opt(4, "attention heads")
    mlp_ratio: float = opt(4.0, "transformer MLP width / d_model")
    window: int = opt(8, "ring KV cache size in frames; training with seq_len <= window + 1 never exceeds it")
    rope_base: float = opt(10000.0, "RoPE base over frame positions")
    # flow-matching U-Net decoder: channels per level at 48, 24, 12 px, res blocks per level
    dec_ch: tuple[int, ...] = opt((32, 64, 128), "decoder (U-Net) channels per level")
    dec_blocks: int = opt(1, "residual blocks per decoder level")
    # warp head: the decoder also predicts a displacement field and starts from frame t warped by
    # it (x_hat = warp(frame t, flow) + residual), so a moved T is the old T resampled, not
    # repainted; a zero-initialised head makes the model start as the residual-only one
    warp: bool = opt(False, "warp head: predict a displacement field and start from frame t warped by it, "
                            "so a moved body is resampled, not repainted; --init may add it (zero-initialised)")
    # K > 0: that field made piecewise rigid, each pixel in one of K layers moved by the rotation +
    # shift fitted to it (unet.RigidLayers); unsupervised layers split the T in two (stage 7), so
    # the shipped model supervises 3 of them with body_masks
    warp_layers: int = opt(0, "with warp: K > 0 makes the field piecewise rigid, K layers each moved by a fitted "
                              "rotation + shift; --init may add it")
    # anchored dreams: re-warping the previous dream 8 times caps the step-8 rigid-T IoU at 0.930
    # (bilinear) even with the true motion; one warp by the composed true motion reaches 0.967
    warp_anchor: bool = opt(False, "anchored dreams (needs body_masks): the bodies of a dreamed frame sample the "
                                   "last real frame by their motions composed since it; --init may change it")
    # with body_masks layer 0 keeps the dense field (the static scene and the pixels a body
    # uncovers) and only the moving bodies move rigidly
    body_masks: float = opt(0.0, "weight of a cross-entropy loss that makes warp_layers 3 the bodies of a frame "
                                 "(scene, T, disc), from per-pixel labels a simulator source gives; 0: off")
    # without warp_loss the residual did all the work (`s`, 309 fine-tuning steps: 0.14 px of
    # motion on the T vs 0.31 px off it, the same blur; docs/history.md)
    warp_loss: float = opt(0.0, "weight of a pixel loss on the warped frame alone (needs warp): the field, not "
                                "the residual, must explain the motion; 0: off")
    # trained through the image loss alone the head moved the pushed T by under half its true
    # motion and the residual repainted it (docs/history.md, stages 5 and 8)
    flow_loss: float = opt(0.0, "weight of an L1 loss (px) of the displacement field (needs warp) against the "
                                "true motion, which a simulator source gives; 0: off")
    cond_dim: int = opt(256, "width of the decoder's (tau, context, action) modulation vector")
    motion_weight: float = opt(20.0, "extra loss weight on pixels that change between frame t and t+1")
    action_dropout: float = opt(0.25, "P(action hidden) in training: those samples train the free dream (the "
                                      "policy), the rest the action-conditioned one")
    # Why policy_loss: the free dream *is* the policy, and a pixel loss says nothing useful about a
    # disc dreamed a few pixels from where the expert put it (two ~3 px blobs that do not overlap:
    # the same loss at any distance); read through the IDM the error is a distance in action space
    policy_loss: float = opt(0.0, "weight of the free dream's action loss: the IDM (frozen for it) reads each "
                                  "freely predicted frame, L1 against the data's action (needs --model both); 0: off")
    # Why prev_action: the pointer leads the disc by ~36 px (DESIGN.md 3), so the frames alone hide
    # where it is, while the expert moves it at a nearly constant velocity (docs/policy.md)
    prev_action: bool = opt(False, "the decoder also gets the action executed into frame t (a learned 'unknown' "
                                   "at an episode's start); --init may add it (zero-initialised)")
    # Why action_aux: a ridge probe reads the expert's next action from the package's context at
    # 23.6 px where pixel BC reads it from two frames at 9.8 (docs/policy.md): world modelling never
    # asked the trunk for the expert's intent, and the free dream cannot render what it lacks
    action_aux: float = opt(0.0, "weight of an L1 loss of an MLP head that reads the data's action a_t off the "
                                 "transformer's context of frame t (training only: the policy reads dreams); 0: off")
    # Why intent_steps: at the DVA's lockstep timing (delay 1) the first free frame needs a_{t+1}; read off
    # a dreamed frame's context it cost the head 0.10 of score that BC, which reads a_{t+1} off real
    # frames, does not lose (docs/history.md, stop 33)
    intent_steps: int = opt(1, "actions the action head reads off the context of frame t: a_t .. a_{t+K-1} (with "
                               "free_action 'intent' the first K frames a plan dreams take their action from the "
                               "last real frame's context)")
    # Why intent_maps: the head reads a_t off the trunk's context at ~9.7 px where BC reads it off two
    # frames at 8.4; a small conv on the encoder's finer map of frames t-1, t beside the context got
    # 8.56 (docs/policy.md, stop 39): the trunk's tokens lose the precision the last pushes need
    intent_maps: bool = opt(False, "the action head also reads the encoder's second-level feature maps of frame t "
                                   "and frame t-1 through two stride-2 convs (needs action_aux; --init may add it, "
                                   "zero-initialised)")
    # Autoregressive dreams feed the model its own slightly wrong frames; trained on clean frames
    # only, `s` turned the T into a noisy cloud from the second dream step (docs/history.md)
    self_forcing: float = opt(0.0, "P(a context frame is replaced by the model's own 1-step prediction of it) "
                                   "in training (one no-grad pass per self_forcing_depth); 0: off")
    # depth K: a run of up to K consecutive swapped frames is exactly the model's own rollout of
    # them (Jacobi iteration of the causal rollout); with 1 it only ever sees 1-step errors
    self_forcing_depth: int = opt(1, "no-grad passes of self forcing: runs of <= K swapped frames are the "
                                     "model's exact autoregressive rollout")
    loss: str = opt("mse", "pixel loss: 'mse' (the mean: blurs what is uncertain) or 'l1' (the median: sharp)",
                    choices=("mse", "l1"))
    sampler_steps: int = opt(4, "flow-matching sampler steps (validation; the exported default of a checkpoint)")
    # Why intent: the free dream is a one-step regression, the per-pixel median of the futures the
    # expert might make, which blurs the disc where the future is uncertain (near the goal); the
    # action head's L1 median is still an action, and a dream told it renders one future
    free_action: str = opt("none", "what conditions the frames a planner dreams past the committed actions, unless "
                                   "told otherwise (the exported default of a checkpoint; dva.policy.PlannerConfig): "
                                   "'none' (the free dream), 'prev' (the previous planned action) or 'intent' (the "
                                   "action the action head reads off the context; needs action_aux)",
                           choices=FREE_ACTIONS)
    idm_ch: tuple[int, ...] = opt((32, 64, 128, 128), "IDM channels per level; it reads frames (t-1, t, t+1) -> a_t")
    groups: int = opt(8, "GroupNorm groups everywhere")

    def __post_init__(self):
        self.enc_ch = tuple(int(c) for c in self.enc_ch)
        self.dec_ch = tuple(int(c) for c in self.dec_ch)
        self.idm_ch = tuple(int(c) for c in self.idm_ch)
        self.action_range = tuple(float(v) for v in self.action_range)
        if len(self.action_range) != 2 or not self.action_range[1] > self.action_range[0]:
            raise ValueError(f"action_range must be (low, high) with high > low, got {self.action_range}")
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
        if self.motion_weight < 0:
            raise ValueError(f"motion_weight must be >= 0, got {self.motion_weight}")
        if not 0 <= self.action_dropout <= 1:
            raise ValueError(f"action_dropout must be in [0, 1], got {self.action_dropout}")
        if self.policy_loss < 0 or (self.policy_loss and not self.action_dropout):
            raise ValueError(f"policy_loss must be >= 0 and needs action_dropout > 0 (it trains the free dream), got "
                             f"{self.policy_loss} (action_dropout={self.action_dropout})")
        if self.action_aux < 0:
            raise ValueError(f"action_aux must be >= 0, got {self.action_aux}")
        if not 1 <= self.intent_steps <= 16 or (self.intent_steps > 1 and not self.action_aux):
            raise ValueError(f"intent_steps must be in [1, 16] and > 1 only with action_aux > 0, got "
                             f"{self.intent_steps} (action_aux={self.action_aux})")
        if self.intent_maps and (not self.action_aux or len(self.enc_ch) < 2):
            raise ValueError(f"intent_maps needs action_aux > 0 (the action head) and >= 2 encoder levels, got "
                             f"action_aux={self.action_aux}, enc_ch={self.enc_ch}")
        if self.free_action not in FREE_ACTIONS or (self.free_action == "intent" and not self.action_aux):
            raise ValueError(f"free_action must be one of {FREE_ACTIONS}, and 'intent' needs action_aux > 0 (the "
                             f"action head), got {self.free_action!r} (action_aux={self.action_aux})")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {self.loss!r}")

    @property
    def tokens_per_frame(self) -> int:
        return self.token_grid**2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DVAConfig":
        for k, keep in RETIRED.items():
            if k in d and keep is not None and d[k] != keep:
                raise ValueError(f"{k}={d[k]!r}: an option dva no longer has (only {keep!r} loads; docs/history.md)")
        d = {k: v for k, v in d.items() if k not in RETIRED}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DVAConfig fields {unknown}")
        return cls(**d)


# Fields that older checkpoints' JSON carries and that no longer configure a model: dropped on
# load when they hold the value that is now built in (None: any value, the field never changed
# inference), refused otherwise. backend: the dvakern kernel switch is the process's
# (dvakern.set_backend, `python -m dva.train --backend`), not a model's. ctx_noise (training-only
# context noise) was superseded by self forcing and warp_interp ('bicubic' warps) never shipped:
# deleted 2026-12-05, both in git and docs/history.md.
RETIRED = {"backend": None, "ctx_noise": None, "warp_interp": "bilinear"}

# The shipped model's heads and losses (dva/assets/dva_s.json; docs/model.md, docs/policy.md lever H):
# a rigid warp of three supervised bodies, anchored dreams, L1, self forcing, 1 sampler step; for
# behaviour: half the samples dream freely, a policy loss through the IDM, the executed action as
# an input, and an MLP head that reads the next action off the context. In the package that head
# also conditions the frames the planner dreams past the committed actions (free_action 'intent',
# docs/policy.md), which makes it part of inference: 1.6M parameters at s's context (3072
# inputs), 7.1M at m's (13824), which would take m over its 30M budget; m keeps the free dream
# until its head reads a smaller context.
SHIPPED = dict(warp=True, warp_layers=3, body_masks=0.05, warp_anchor=True, warp_loss=0.5, flow_loss=0.1,
               motion_weight=5.0, loss="l1", self_forcing=0.6, self_forcing_depth=1, sampler_steps=1,
               action_dropout=0.5, policy_loss=1.0, prev_action=True, action_aux=1.0)

PRESETS: dict[str, DVAConfig] = {
    # seconds on CPU, no simulator losses (trains on any video): for tests
    "tiny": DVAConfig(name="tiny", enc_ch=(16, 16, 32), token_grid=2, d_model=32, n_layers=2, n_heads=2,
                      window=4, dec_ch=(16, 16, 32), cond_dim=32, idm_ch=(16, 16, 32, 32), groups=4),
    # what ships (dva/assets/dva_s): real time on 2 CPU cores; tests/test_model.py checks it equals the package
    "s": DVAConfig(name="s", free_action="intent", **SHIPPED),
    # GPU preset, < 30M parameters including the IDM: the shipped recipe at a larger size
    "m": DVAConfig(name="m", enc_ch=(64, 128, 256), token_grid=6, d_model=384, n_layers=6, n_heads=6,
                   window=16, dec_ch=(64, 128, 256), dec_blocks=2, cond_dim=512, idm_ch=(32, 64, 128, 256),
                   groups=16, **SHIPPED),
}


def preset(name: str, **overrides) -> DVAConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
