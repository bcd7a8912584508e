"""The command line of `python -m dva.train`, derived from the fields of TrainConfig (how to train)
and DVAConfig (the model; its fields given on the command line override the preset's), each
declared once with its help text; the training presets, argument checks, and the --data / --mix
parsers."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from dva.data.loader import MixtureSchedule
from dva.model.config import PRESETS as MODEL_PRESETS
from dva.model.config import DVAConfig, opt, preset

DESCRIPTION = """Train the DVA video model and/or its IDM (context amortization; docs/model.md).

The defaults are the shipped recipe: `python -m dva.train --out runs/s` trains preset s (the
packaged architecture and losses) on data/random, data/goal and data/expert (their collect
commands: docs/model.md). Model options (--warp, --policy-loss, ...) override the preset's."""


@dataclass
class TrainConfig:
    model: str = opt("both", "what to train: the video model, the IDM, or both in one process on the same batches",
                     choices=("dva", "idm", "both"))
    preset: str = opt("s", "model preset (dva/model/config.py); also sets the training defaults of that size",
                      choices=tuple(sorted(MODEL_PRESETS)))
    data: list = field(default_factory=lambda: ["random=data/random", "goal=data/goal", "expert=data/expert"],
                       metadata={"help": "data sources as NAME=DIR (repeatable): folders written by `python -m "
                                         "dva.collect`, or LeRobot-format datasets (docs/data.md)"})
    mix: str = opt("0:random=0.05,goal=0.05,expert=0.9",
                   "mixture schedule: phases 'START:NAME=W,NAME=W;START:...' with START a fraction of --steps (first "
                   "0), weights normalized per phase; or 'staged' for 70/15/15 -> 0/20/80 -> 0/5/95 random/goal/"
                   "expert. Validation uses the last phase's mix")
    seq_len: int = opt(9, "frames per training sequence L (loss at L-1 positions; the IDM uses L-2 triples)")
    batch_size: int = opt(8, "sequences per step (per rank under DDP)")
    steps: int = opt(8500, "total optimizer steps, the LR schedule's length (8,500 x 8 x 8 = 544k predicted frames, "
                           "what the package was trained on)")
    lr: float = opt(3e-4, "peak AdamW learning rate")
    warmup: int = opt(50, "linear warmup steps")
    min_lr_frac: float = opt(0.1, "cosine decays to lr * this")
    weight_decay: float = opt(0.01, "AdamW weight decay (matrices and conv kernels only)")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0: off)")
    ema: float = opt(0.995, "EMA decay of the weights that are validated and exported")
    val_every: int = opt(250, "validate on held-out episodes every N steps (0: only at the end)")
    val_batch: int = opt(8, "held-out sequences per validation")
    val_fraction: float = opt(0.05, "fraction of episodes held out for validation (a hash of source and episode)")
    val_ctx: int = opt(3, "real context frames before the autoregressive dream")
    val_dream: int = opt(8, "autoregressive dream length for the k-step PSNR")
    ckpt_every: int = opt(100, "save a checkpoint every N steps (also on exit and on SIGINT/SIGTERM)")
    log_every: int = opt(10, "append a line to OUT/log.jsonl every N steps")
    out: str = opt("runs/s", "output directory: ckpt.safetensors/.json, log.jsonl, val.jsonl, dream_*.png")
    resume: str = opt("", "resume from this checkpoint stem ('auto': OUT/ckpt if it exists, else start fresh, so "
                          "the same command both starts and continues a run); step, schedule, optimizer, EMA continue")
    init: str = opt("", "start from this checkpoint's weights (raw and EMA; same architecture) with a fresh "
                        "optimizer, schedule and step 0: fine-tuning, e.g. with another --mix or --policy-loss")
    stop_after: int = opt(0, "stop (and save) after N steps of this invocation, schedule unchanged; resume later (0: off)")
    device: str = opt("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'")
    seed: int = opt(0, "seed for init, training batches and noise (validation always uses the same held-out sequences)")
    backend: str = opt("auto", "dvakern kernel backend of this run", choices=("ref", "triton", "auto"))
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    # DVAConfig fields given on the command line (they override the preset's); recorded in checkpoints
    model_overrides: dict = field(default_factory=dict, metadata={"cli": False})


TRAIN_PRESETS = {
    "tiny": dict(seq_len=5, batch_size=4, steps=200, warmup=10, val_every=0, val_batch=2, val_dream=3,
                 ckpt_every=0, out="runs/tiny"),
    "s": {},  # the defaults above
    "m": dict(batch_size=64, steps=20000, warmup=500, val_every=1000, ckpt_every=1000, out="runs/m"),
}


def _add(p, f: dataclasses.Field, shown) -> None:
    """One flag from a config field: --snake-case, its help, bools as --x/--no-x, tuples as lists."""
    meta = dict(f.metadata)
    flag = "--" + f.name.replace("_", "-")
    help_ = meta.pop("help") + f" (default: {shown})"
    kind = type(shown)
    if f.name == "data":
        p.add_argument(flag, action="append", default=None, metavar="NAME=DIR", help=help_)
    elif kind is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
    elif kind is tuple:
        p.add_argument(flag, type=type(shown[0]), nargs="+", default=None, help=help_)
    else:
        p.add_argument(flag, type=kind, default=None, help=help_, **meta)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dva.train", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    base = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("cli", True):
            _add(p, f, getattr(base, f.name) if f.name != "data" else " ".join(base.data))
    g = p.add_argument_group("model (DVAConfig; default: preset s's value, i.e. the shipped model's)")
    for f in dataclasses.fields(DVAConfig):
        if f.metadata.get("cli", True):
            _add(g, f, getattr(MODEL_PRESETS["s"], f.name))
    return p


def parse_args(argv=None) -> TrainConfig:
    p = build_parser()
    a = vars(p.parse_args(argv))
    model_fields = {f.name for f in dataclasses.fields(DVAConfig)}
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in a.items()
                 if k in model_fields and v is not None}
    given = {k: v for k, v in a.items() if k not in model_fields and v is not None}
    cfg = dataclasses.replace(TrainConfig(), **TRAIN_PRESETS[a["preset"] or "s"])
    cfg = dataclasses.replace(cfg, **given, model_overrides=overrides)
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
    if cfg.lr <= 0:
        p.error(f"--lr must be > 0, got {cfg.lr}")
    try:
        mcfg = model_config(cfg)
    except (TypeError, ValueError) as e:
        p.error(f"model config: {e}")
    if mcfg.policy_loss and cfg.model != "both":
        p.error("--policy-loss reads the free dream with the IDM being trained: it needs --model both")
    try:
        sources = parse_sources(cfg.data)
        extra = sorted(make_schedule(cfg).sources - set(sources))
        if extra:
            raise ValueError(f"--mix names sources {extra} that --data does not give (have {sorted(sources)}); "
                             f"e.g. --mix 0:{'=1,'.join(sorted(sources))}=1")
    except ValueError as e:
        p.error(str(e))
    return cfg


def model_config(cfg: TrainConfig) -> DVAConfig:
    """The preset with this run's command-line overrides (raises ValueError on a bad value)."""
    return preset(cfg.preset, **cfg.model_overrides)


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
