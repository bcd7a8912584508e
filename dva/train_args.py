"""The command line of `python -m dva.train`: TrainConfig (every flag, with its help), the
size presets of the training defaults, argument checks, and the --data / --mix parsers."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from dva.data.loader import MixtureSchedule
from dva.model.config import PRESETS as MODEL_PRESETS
from dva.model.config import WARP_INTERPS, DVAConfig, preset

DESCRIPTION = "Train the DVA video model and/or its IDM (context amortization; see docs/model.md)."


@dataclass
class TrainConfig:
    model: str = "both"
    preset: str = "s"
    data: list = field(default_factory=lambda: ["random=data/random", "expert=data/expert"])
    mix: str = "0:random=0.85,expert=0.15;0.3:random=0.3,expert=0.7;0.6:random=0.05,expert=0.95"
    seq_len: int = 9
    batch_size: int = 8
    steps: int = 2000
    lr: float = 6e-4
    warmup: int = 100
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.995
    val_every: int = 250
    val_batch: int = 8
    val_fraction: float = 0.05
    val_ctx: int = 3
    val_dream: int = 8
    ckpt_every: int = 100
    log_every: int = 10
    out: str = "runs/s"
    resume: str = ""
    init: str = ""
    motion_weight: float = 20.0
    ctx_noise: float = 0.0
    self_forcing: float = 0.0
    self_forcing_depth: int = 1
    loss: str = "mse"
    warp: bool = False
    warp_layers: int = 0
    warp_interp: str = "bilinear"
    warp_anchor: bool = False
    warp_loss: float = 0.0
    flow_loss: float = 0.0
    body_masks: float = 0.0
    action_dropout: float = 0.25
    policy_loss: float = 0.0
    prev_action: bool = False
    stop_after: int = 0
    device: str = "auto"
    seed: int = 0
    backend: str = "auto"
    threads: int = 0
    sampler_steps: int = 4


HELP = {
    "model": "what to train: 'dva' (video model), 'idm', or 'both' in one process on the same batches",
    "preset": f"model preset, one of {sorted(MODEL_PRESETS)} (dva/model/config.py)",
    "data": "data sources as NAME=DIR (repeatable), dataset dirs written by `python -m dva.collect`",
    "mix": "mixture schedule: phases 'START:NAME=W,NAME=W;START:...' with START a fraction of --steps "
           "(first 0), weights normalized per phase; or 'staged' for dva.data's 70/15/15 -> 0/20/80 -> 0/5/95 "
           "random/goal/expert. Validation uses the last phase's mix",
    "seq_len": "frames per training sequence L (loss at L-1 positions; the IDM uses L-2 triples)",
    "batch_size": "sequences per step (per rank under DDP)",
    "steps": "total optimizer steps (the LR schedule spans these)",
    "lr": "peak AdamW learning rate",
    "warmup": "linear warmup steps",
    "min_lr_frac": "cosine decays to lr * this",
    "weight_decay": "AdamW weight decay (matrices and conv kernels only)",
    "grad_clip": "clip the global gradient norm to this (0: off)",
    "ema": "EMA decay of the weights that are validated and exported",
    "val_every": "validate on held-out episodes every N steps (0: only at the end)",
    "val_batch": "held-out sequences per validation",
    "val_fraction": "fraction of episodes held out for validation (chosen by a hash of source and episode)",
    "val_ctx": "real context frames before the autoregressive dream",
    "val_dream": "autoregressive dream length for the k-step PSNR",
    "ckpt_every": "save a checkpoint every N steps (also on exit and on SIGINT/SIGTERM)",
    "log_every": "append a line to OUT/log.jsonl every N steps",
    "out": "output directory: ckpt.safetensors/.json, log.jsonl, val.jsonl, dream_*.png",
    "resume": "resume from this checkpoint stem ('auto': OUT/ckpt if it exists, else start fresh, so the same "
              "command both starts and continues a run); step, schedule, optimizer, EMA continue",
    "init": "start from this checkpoint's weights (raw and EMA; same architecture) with a fresh optimizer, "
            "schedule and step 0: fine-tuning, e.g. with another --mix or --motion-weight",
    "motion_weight": "extra loss weight on pixels that change between frame t and t+1 (the disc, a pushed T)",
    "ctx_noise": "context noise augmentation: each context frame gets Gaussian noise with a std from U(0, this) "
                 "(in [-1, 1] pixel units) so autoregressive dreams stay stable; 0: off",
    "self_forcing": "probability that a context frame is replaced by the model's own 1-step prediction of it "
                    "(one extra no-grad pass per step), so it learns to recover from its own dreams; 0: off",
    "self_forcing_depth": "no-grad passes of --self-forcing (K): runs of up to K swapped frames are the model's "
                          "exact autoregressive rollout, so it sees compounded errors, not only 1-step ones",
    "warp": "decoder head that predicts a displacement field and starts from frame t warped by it, so a "
            "moved T is resampled rather than repainted; --init from a checkpoint without it adds it at zero",
    "warp_layers": "with --warp: K > 0 makes the displacement field piecewise rigid: each pixel in one of K "
                   "layers, each layer moved by the rotation + shift fitted to its pixels; --init may add it",
    "warp_interp": "how the warp head resamples frame t: 'bilinear' or 'bicubic' (blurs less when dreams are "
                   "warped again and again); --init may change it",
    "warp_anchor": "anchored dreams (needs --body-masks): the T and disc of a dreamed frame sample the last real "
                   "frame by their motions composed since it, not the previous dream; self forcing rolls out "
                   "the same way; --init may change it",
    "warp_loss": "weight of a second pixel loss on the warped frame alone (needs --warp): it makes the "
                 "displacement field, not the residual, explain the motion; 0: off",
    "flow_loss": "weight of an L1 loss (px) of the displacement field (needs --warp) against the true motion "
                 "of the T and the disc, computed from the sources' states (training only); 0: off",
    "body_masks": "weight of a cross-entropy loss that makes --warp-layers 3 the bodies of a frame (static scene, "
                  "T, disc; from the sources' states): the T and the disc move rigidly, the rest keeps the dense "
                  "field; 0: off",
    "action_dropout": "probability that a training sample's action is hidden: those samples train the free dream "
                      "(what the expert would do), i.e. the policy; the rest train the action-conditioned dream",
    "policy_loss": "weight of the free dream's action loss: the IDM (frozen for it) reads each freely predicted "
                   "frame and its action is compared with the data's (needs --model both); 0: off",
    "prev_action": "the decoder also gets the action executed into frame t (the pointer leads the disc, so frames "
                   "alone hide it); --init may add it (zero-initialised)",
    "loss": "pixel loss of the decoder: 'mse' or 'l1' (sharper: the median of what is uncertain)",
    "stop_after": "stop (and save) after N steps of this invocation, schedule unchanged; resume later (0: off)",
    "device": "'auto' (cuda if available), 'cpu' or 'cuda[:i]'",
    "seed": "seed for init, training batches and noise (validation always uses the same held-out sequences)",
    "backend": "dvakern backend: 'ref', 'triton' or 'auto'",
    "threads": "torch CPU threads (0: torch's default)",
    "sampler_steps": "sampler steps used in validation",
}

TRAIN_PRESETS = {
    "tiny": dict(seq_len=5, batch_size=4, steps=200, warmup=10, val_every=0, val_batch=2, val_dream=3,
                 ckpt_every=0, out="runs/tiny"),
    "s": {},
    "m": dict(seq_len=9, batch_size=64, steps=20000, lr=3e-4, warmup=500, val_every=1000, ckpt_every=1000,
              out="runs/m"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dva.train", description=DESCRIPTION)
    base = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(base, f.name)
        if f.name == "data":
            p.add_argument(flag, action="append", default=None, metavar="NAME=DIR", help=HELP[f.name] +
                           f" (default: {' '.join(default)})")
        elif f.name == "model":
            p.add_argument(flag, choices=["dva", "idm", "both"], default=default,
                           help=HELP[f.name] + f" (default: {default})")
        elif f.name == "preset":
            p.add_argument(flag, choices=sorted(MODEL_PRESETS), default=default,
                           help=HELP[f.name] + f"; also sets training defaults for that size (default: {default})")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=HELP[f.name] + f" (default: {default})")
        elif f.name == "loss":
            p.add_argument(flag, choices=["mse", "l1"], default=default, help=HELP[f.name] + f" (default: {default})")
        elif f.name == "warp_interp":
            p.add_argument(flag, choices=WARP_INTERPS, default=default,
                           help=HELP[f.name] + f" (default: {default})")
        elif f.name == "backend":
            p.add_argument(flag, choices=["ref", "triton", "auto"], default=default,
                           help=HELP[f.name] + f" (default: {default})")
        else:
            p.add_argument(flag, type=type(default), default=None, help=HELP[f.name] + f" (default: {default})")
    return p


def parse_args(argv=None) -> TrainConfig:
    p = build_parser()
    a = p.parse_args(argv)
    cfg = dataclasses.replace(TrainConfig(), **TRAIN_PRESETS[a.preset])
    given = {k: v for k, v in vars(a).items() if v is not None}
    cfg = dataclasses.replace(cfg, **given)
    for name in ("seq_len", "batch_size", "steps", "val_batch", "val_dream"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    need = 3 if cfg.model != "dva" else 2
    if cfg.seq_len < need:
        p.error(f"--seq-len must be >= {need} for --model {cfg.model}, got {cfg.seq_len}")
    if cfg.val_ctx < 1:
        p.error(f"--val-ctx must be >= 1, got {cfg.val_ctx}")
    if not 0 < cfg.val_fraction < 1:
        p.error(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    if not 0 <= cfg.ema < 1:
        p.error(f"--ema must be in [0, 1), got {cfg.ema}")
    if cfg.resume and cfg.init:
        p.error("--resume and --init exclude each other: --resume continues a run, --init starts a new one")
    if cfg.motion_weight < 0:
        p.error(f"--motion-weight must be >= 0, got {cfg.motion_weight}")
    if cfg.policy_loss and cfg.model != "both":
        p.error("--policy-loss reads the free dream with the IDM being trained: it needs --model both")
    if cfg.lr <= 0:
        p.error(f"--lr must be > 0, got {cfg.lr}")
    try:
        model_config(cfg)  # --ctx-noise, --sampler-steps, ... are checked by DVAConfig
    except ValueError as e:
        p.error(f"model config: {e}")
    try:
        sources = parse_sources(cfg.data)
        extra = sorted(make_schedule(cfg).sources - set(sources))
        if extra:
            raise ValueError(f"--mix names sources {extra} that --data does not give (have {sorted(sources)})")
    except ValueError as e:
        p.error(str(e))
    return cfg


def model_config(cfg: TrainConfig) -> DVAConfig:
    """The preset with this run's loss/inference fields (raises ValueError on a bad value)."""
    return preset(cfg.preset, sampler_steps=cfg.sampler_steps, motion_weight=cfg.motion_weight,
                  ctx_noise=cfg.ctx_noise, self_forcing=cfg.self_forcing,
                  self_forcing_depth=cfg.self_forcing_depth, loss=cfg.loss,
                  warp=cfg.warp, warp_layers=cfg.warp_layers, warp_interp=cfg.warp_interp,
                  warp_anchor=cfg.warp_anchor, warp_loss=cfg.warp_loss,
                  flow_loss=cfg.flow_loss, body_masks=cfg.body_masks,
                  action_dropout=cfg.action_dropout, policy_loss=cfg.policy_loss, prev_action=cfg.prev_action)


def parse_sources(items) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, path = str(it).partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--data: expected NAME=DIR, got {it!r}")
        if not Path(path).is_dir():
            raise ValueError(f"--data {name}: directory {path!r} does not exist")
        out[name] = path
    return out


def make_schedule(cfg: TrainConfig) -> MixtureSchedule:
    """--mix -> dva.data's MixtureSchedule (phase starts given as fractions of --steps)."""
    if cfg.mix.strip() == "staged":
        return MixtureSchedule.staged(cfg.steps)
    phases = []
    for ph in cfg.mix.split(";"):
        start, sep, body = ph.partition(":")
        w = {}
        try:
            frac = float(start)
            for it in body.split(","):
                name, eq, val = it.partition("=")
                if not eq or not name.strip():
                    raise ValueError
                w[name.strip()] = float(val)
        except ValueError:
            raise ValueError(f"--mix: cannot parse phase {ph!r}; expected START:NAME=W,NAME=W") from None
        if not sep or not 0 <= frac < 1:
            raise ValueError(f"--mix: phase {ph!r} needs a START fraction in [0, 1)")
        phases.append((int(round(frac * cfg.steps)), w))
    return MixtureSchedule(tuple(phases))  # validates order and weights
