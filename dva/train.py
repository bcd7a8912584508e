"""Train the DVA video model and/or its IDM: `python -m dva.train --help`.

Context amortization: each batch of L-frame sequences is encoded noise-free once and the
next-frame flow-matching loss is taken at every position, each with its own noise level. The IDM
trains on the same batches (every interior frame triple) in the same process (`--model both`),
or alone (`--model idm`, any source, random motion included).

Deterministic by step: the batch of step k comes from `loader.sample(k)` and the noise from a
generator seeded by (seed, k, rank), the LR schedule is a function of k, and optimizer + EMA
state are in the checkpoint, so `--resume` continues exactly where a run stopped.
SIGINT/SIGTERM finish the current step, save, and exit 0. `torchrun --nproc_per_node=N -m
dva.train ...` trains with DDP (each rank samples its own batches: seed + rank).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from dva import checkpoint as ckpt
from dva.data.loader import MixtureSchedule, SequenceLoader
from dva.data.store import DatasetError
from dva.model.config import PRESETS as MODEL_PRESETS
from dva.model.config import DVAConfig, preset
from dva.model.dva import DVA, param_count
from dva.model.frames import from_frames
from dva.model.idm import IDM
from dva.model.validate import dream_strip, validate


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
    loss: str = "mse"
    warp: bool = False
    warp_loss: float = 0.0
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
    "warp": "decoder head that predicts a displacement field and starts from frame t warped by it, so a "
            "moved T is resampled rather than repainted; --init from a checkpoint without it adds it at zero",
    "warp_loss": "weight of a second pixel loss on the warped frame alone (needs --warp): it makes the "
                 "displacement field, not the residual, explain the motion; 0: off",
    "loss": "pixel loss of the decoder: 'mse' or 'l1' (sharper: the median of what is uncertain)",
    "stop_after": "stop (and save) after N steps of this invocation, schedule unchanged; resume later (0: off)",
    "device": "'auto' (cuda if available), 'cpu' or 'cuda[:i]'",
    "seed": "seed for init, batches and noise",
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
    p = argparse.ArgumentParser(prog="python -m dva.train", description=__doc__.split("\n\n")[0])
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
    return preset(cfg.preset, backend=cfg.backend, sampler_steps=cfg.sampler_steps, motion_weight=cfg.motion_weight,
                  ctx_noise=cfg.ctx_noise, self_forcing=cfg.self_forcing, loss=cfg.loss,
                  warp=cfg.warp, warp_loss=cfg.warp_loss)


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


def make_loader(cfg: TrainConfig, split: str, seq_len: int, batch: int, device, seed: int) -> SequenceLoader:
    sched = make_schedule(cfg)
    if split == "val":  # held-out numbers on the mix training ends with (mostly expert)
        sched = MixtureSchedule.constant(sched.phases[-1][1])
    return SequenceLoader(parse_sources(cfg.data), seq_len=seq_len, batch_size=batch, schedule=sched,
                          device=device, seed=seed, split=split, val_fraction=cfg.val_fraction)


class Trainee(nn.Module):
    """The modules trained together, so DDP, the optimizer and the EMA see one module."""

    def __init__(self, mcfg: DVAConfig, which: str):
        super().__init__()
        self.dva = DVA(mcfg) if which in ("dva", "both") else None
        self.idm = IDM(mcfg) if which in ("idm", "both") else None

    def forward(self, x, actions, generator=None):
        out = {}
        if self.dva is not None:
            out["loss_dva"] = self.dva(x, actions, generator=generator)
        if self.idm is not None:
            out["loss_idm"], out["idm_err_px"] = self.idm.loss(x, actions)
        return out


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))


# ---- checkpoint <-> training state --------------------------------------------------------
_PARTS = (("dva", "model", "ema"), ("idm", "idm", "idm_ema"))


def state_tensors(model: Trainee, ema: Trainee, opt) -> dict[str, torch.Tensor]:
    t = {}
    for attr, raw, avg in _PARTS:
        if getattr(model, attr) is not None:
            t.update({f"{raw}.{k}": v for k, v in getattr(model, attr).state_dict().items()})
            t.update({f"{avg}.{k}": v for k, v in getattr(ema, attr).state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        t.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()})
    return t


# config fields that only change the loss or inference, not the weights: --init may change them
_LOSS_ONLY = ("motion_weight", "ctx_noise", "self_forcing", "loss", "warp_loss", "action_dropout", "sampler_steps", "backend")


def load_state(path, model: Trainee, ema: Trainee, opt, mcfg: DVAConfig) -> dict:
    """Load weights (and, with opt, the optimizer state) from a checkpoint. opt=None is --init."""
    tensors, meta = ckpt.read(path)
    st = ckpt.paths(path)[0]
    try:
        saved = DVAConfig.from_dict(meta["config"]).to_dict()  # JSON lists -> the config's tuples
    except (TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{st}: bad model config ({e})") from None
    mine = mcfg.to_dict()
    fresh = ()
    if opt is None:
        for k in _LOSS_ONLY:
            saved.pop(k, None), mine.pop(k, None)
        if mine["warp"] and not saved["warp"]:  # --init may add the (zero-initialised) warp head
            saved.pop("warp"), mine.pop("warp")
            fresh = ("decoder.flow.",)
    diff = ckpt.config_diff(saved, mine)
    if diff:
        raise ckpt.CheckpointError(f"{st}: model config differs from this run's: {'; '.join(diff)}")
    for attr, raw, avg in _PARTS:
        if getattr(model, attr) is not None:
            ckpt.load_into(getattr(model, attr), ckpt.section(tensors, raw), f"{st} [{raw}]", fresh)
            ckpt.load_into(getattr(ema, attr), ckpt.section(tensors, avg), f"{st} [{avg}]", fresh)
    if opt is None:
        return meta
    sd = opt.state_dict()
    state = {}
    for k, v in ckpt.section(tensors, "opt").items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    if sorted(state) != sorted(sd["state"]) and sd["state"]:
        raise ckpt.CheckpointError(f"{st}: optimizer state does not match the model")
    sd["state"] = state
    opt.load_state_dict(sd)
    return meta


def meta_for(cfg: TrainConfig, mcfg: DVAConfig, step: int, data_mix: dict, metrics: dict | None = None) -> dict:
    return {"config": mcfg.to_dict(), "train": dataclasses.asdict(cfg), "step": step, "commit": ckpt.git_commit(),
            "data_mix": data_mix, "metrics": metrics or {}}


def append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ---- the loop ---------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(cfg.device)
    if ddp:
        import torch.distributed as dist

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    main = rank == 0
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)

    mcfg = model_config(cfg)
    torch.manual_seed(cfg.seed)
    model = Trainee(mcfg, cfg.model).to(dev)
    ema = Trainee(mcfg, cfg.model).to(dev)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = make_optimizer(cfg, model)
    step = 0
    resume = cfg.resume
    if resume == "auto" and not (out / "ckpt.json").exists():
        resume = ""  # 'auto' means: continue OUT/ckpt if there is one, else start; re-run the same command
        if main:
            print(f"[dva.train] --resume auto: no checkpoint in {out}, starting at step 0", flush=True)
    if resume:
        path = out / "ckpt" if resume == "auto" else resume
        meta = load_state(path, model, ema, opt, mcfg)
        step = int(meta["step"])
    elif cfg.init:
        meta = load_state(cfg.init, model, ema, None, mcfg)
        if main:
            print(f"[dva.train] weights from {cfg.init} (step {meta.get('step')}); fresh optimizer and schedule",
                  flush=True)
    if main:
        counts = {k: param_count(getattr(model, k)) for k in ("dva", "idm") if getattr(model, k) is not None}
        print(f"[dva.train] preset {mcfg.name}: " + ", ".join(f"{k} {v / 1e6:.2f}M params" for k, v in counts.items())
              + f"; device {dev}, start step {step}/{cfg.steps}", flush=True)
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    loader = make_loader(cfg, "train", cfg.seq_len, cfg.batch_size, dev, cfg.seed + 1000 * rank)
    # recorded once, from what was loaded: the source dirs may change on disk during a long run
    data_mix = {"sources": {n: str(s) for n, s in parse_sources(cfg.data).items()}, "mix": cfg.mix,
                "phases": [list(p) for p in make_schedule(cfg).phases],
                "sequences": {n: len(src) for n, src in loader.sources.items()}}
    val_loader = make_loader(cfg, "val", cfg.val_ctx + cfg.val_dream, cfg.val_batch, dev, cfg.seed) if main else None

    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:  # a second signal: give up immediately
            raise KeyboardInterrupt
        stop["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else dict(device_type="cpu",
                                                                                         enabled=False)
    last_val: dict = {}

    def save(s):
        if main:
            ckpt.save(out / "ckpt", state_tensors(model, ema, opt), meta_for(cfg, mcfg, s, data_mix, last_val))

    def run_val(s):
        nonlocal last_val
        batch = val_loader.sample(0)  # the same held-out sequences every time: comparable numbers
        x = from_frames(batch["frames"])
        ema.eval()
        m, dreams = validate(ema.dva, ema.idm, x, batch["actions"].float(), cfg.val_ctx, cfg.sampler_steps, cfg.seed)
        last_val = {"step": s, **m}
        append_jsonl(out / "val.jsonl", last_val)
        if dreams is not None:
            dream_strip(x, dreams, cfg.val_ctx, out / "dream_latest.png")
        tqdm.write(f"[val {s}] " + " ".join(f"{k}={v:.2f}" for k, v in m.items() if isinstance(v, float)))

    pbar = tqdm(total=cfg.steps, initial=step, disable=not main, desc="train", dynamic_ncols=True, mininterval=2.0)
    t0, frames_done = time.perf_counter(), 0
    try:
        first = step
        while step < cfg.steps and not stop["flag"] and not (cfg.stop_after and step - first >= cfg.stop_after):
            batch = loader.sample(step)
            x = from_frames(batch["frames"])  # (B, L, 3, H, W)
            actions = batch["actions"].float()
            src = list(batch.get("source", []))
            gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            model.train()
            with torch.autocast(**amp):
                losses = net(x, actions, generator=gen)
            total = sum(v for k, v in losses.items() if k.startswith("loss"))
            opt.zero_grad(set_to_none=True)
            total.backward()
            gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - cfg.ema)
            step += 1
            frames_done += x.shape[0] * (x.shape[1] - 1)
            if main:
                rec = {k: float(v.detach()) for k, v in losses.items()}
                pbar.set_postfix({k.replace("loss_", ""): f"{v:.4f}" for k, v in rec.items()})
                pbar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    dt = time.perf_counter() - t0
                    append_jsonl(out / "log.jsonl", {"step": step, **rec, "lr": lr_at(cfg, step - 1),
                                                     "grad_norm": float(gnorm), "pred_frames_per_s": frames_done / dt,
                                                     "sources": {n: src.count(n) for n in set(src)}})
                if cfg.val_every and step % cfg.val_every == 0:
                    run_val(step)
                if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                    save(step)
        if main:
            if not cfg.val_every or step % cfg.val_every:
                run_val(step)
            save(step)
            why = "signal" if stop["flag"] else ("done" if step >= cfg.steps else "--stop-after")
            print(f"[dva.train] stopped at step {step} ({why}); checkpoint {out / 'ckpt'}.safetensors", flush=True)
    finally:
        pbar.close()
        for s, h in old.items():
            signal.signal(s, h)
        if ddp:
            import torch.distributed as dist

            dist.destroy_process_group()
    return {"step": step, "val": last_val}


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (ckpt.CheckpointError, DatasetError) as e:
        print(f"dva.train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
