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

import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import dvakern
from dva import checkpoint as ckpt
from dva.data.loader import MixtureSchedule, SequenceLoader, stored_action_range, stored_frame_size
from dva.data.store import DatasetError
from dva.model.config import DVAConfig
from dva.model.dva import DVA, param_count
from dva.model.frames import from_frames, norm_action
from dva.model.idm import IDM
from dva.pusht.flow import body_labels, motion_field
from dva.pusht.validate import dream_strip, validate
from dva.train_args import TrainConfig, make_schedule, model_config, parse_args, parse_sources  # noqa: F401


def make_loader(cfg: TrainConfig, split: str, seq_len: int, batch: int, device, seed: int,
                size: int = 96) -> SequenceLoader:
    sched = make_schedule(cfg)
    if split == "val":  # held-out numbers on the mix training ends with (mostly expert)
        sched = MixtureSchedule.constant(sched.phases[-1][1])
    return SequenceLoader(parse_sources(cfg.data), seq_len=seq_len, batch_size=batch, schedule=sched,
                          device=device, seed=seed, split=split, val_fraction=cfg.val_fraction, size=size)


class Trainee(nn.Module):
    """The modules trained together, so DDP, the optimizer and the EMA see one module."""

    def __init__(self, mcfg: DVAConfig, which: str):
        super().__init__()
        self.dva = DVA(mcfg) if which in ("dva", "both") else None
        self.idm = IDM(mcfg) if which in ("idm", "both") else None

    def forward(self, x, actions, generator=None, states=None):
        """states (B, L, 5): the PushT states of the frames; the losses that need per-pixel targets
        from a simulator (flow, body labels) get them from dva.pusht.flow, the model never sees states."""
        out = {}
        if self.dva is not None:
            out["loss_dva"] = self.dva(x, actions, generator=generator, **simulator_targets(states, self.dva.cfg),
                                       action_reader=self._frozen_idm if self.idm is not None else None)
        if self.idm is not None:
            out["loss_idm"], out["idm_err_px"] = self.idm.loss(x, actions)
        return out

    def _frozen_idm(self, prev, cur, nxt):
        """The IDM as DVAConfig.policy_loss reads the free dream: gradients reach the frames, not its
        weights (they learn from real frames only, in loss_idm)."""
        params = {k: v.detach() for k, v in self.idm.named_parameters()}
        return norm_action(torch.func.functional_call(self.idm, params, (prev, cur, nxt)), self.idm.cfg.action_range)


def simulator_targets(states, mcfg: DVAConfig) -> dict:
    """The optional per-pixel targets of DVA.forward that PushT's states give: the true motion
    (flow_loss) and which body each pixel shows (body_masks); {} without states."""
    out = {}
    if states is not None and mcfg.flow_loss:
        out["flow"] = motion_field(states[:, :-1], states[:, 1:], mcfg.img)  # (B, L-1, 2, H, W) px
    if states is not None and mcfg.body_masks:
        out["labels"] = body_labels(states[:, 1:], mcfg.img)  # (B, L-1, H, W)
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
    return {**t, **ckpt.optimizer_tensors(opt)}


# held-out sequences and their noise do not depend on --seed, so runs with different seeds compare
VAL_SEED = 0

# config fields that only change the loss or inference, not the weights: --init may change them
# (warp_anchor changes the forward pass but no weight: a fine-tune learns it)
# (not body_masks: with it the rigid layers' layer 0 keeps the dense field, see unet.RigidLayers)
_LOSS_ONLY = ("motion_weight", "self_forcing", "self_forcing_depth", "loss", "warp_loss", "flow_loss", "action_dropout",
              "policy_loss", "sampler_steps", "warp_anchor", "free_action")


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
        if mine["warp_layers"] and not saved["warp_layers"]:  # ... or make a dense head rigid by layers
            for k in ("warp_layers", "body_masks"):
                saved.pop(k), mine.pop(k)
            fresh = fresh + ("decoder.rigid.",)
        if mine["prev_action"] and not saved["prev_action"]:  # ... or add the (zero-initialised) prev-action input
            saved.pop("prev_action"), mine.pop("prev_action")
            fresh = fresh + ("decoder.prev_emb.", "decoder.null_prev")
        if mine["action_aux"] and not saved["action_aux"]:  # ... or add the auxiliary action head
            saved.pop("action_aux"), mine.pop("action_aux")
            fresh = fresh + ("action_head.",)
        elif mine["action_aux"] and saved["action_aux"]:  # its weight is a loss weight
            saved.pop("action_aux"), mine.pop("action_aux")
        if mine["intent_maps"] and not saved["intent_maps"]:  # ... or give the head the (zero-initialised) maps
            saved.pop("intent_maps"), mine.pop("intent_maps")
            fresh = fresh + ("intent_conv.",)
    diff = ckpt.config_diff(saved, mine)
    if diff:
        raise ckpt.CheckpointError(f"{st}: model config differs from this run's: {'; '.join(diff)}")
    exported = opt is None and "exported_from" in meta  # an inference-only copy: its (EMA) weights start both
    for attr, raw, avg in _PARTS:
        if getattr(model, attr) is not None:
            ckpt.load_into(getattr(model, attr), ckpt.section(tensors, raw), f"{st} [{raw}]", fresh)
            src = raw if exported else avg
            ckpt.load_into(getattr(ema, attr), ckpt.section(tensors, src), f"{st} [{src}]", fresh)
    if opt is None:
        return meta
    ckpt.load_optimizer(opt, tensors, st)
    return meta


# the TrainConfig fields that make a run what it is: --resume must repeat them (--out, --stop-after,
# --device, --threads, logging and validation cadence may change; another --steps would bend the schedule)
RUN_FLAGS = {k: f"--{k.replace('_', '-')}" for k in ("model", "data", "mix", "seq_len", "batch_size", "steps", "lr",
                                                       "warmup", "min_lr_frac", "weight_decay", "grad_clip", "ema",
                                                       "seed", "val_fraction")}


def meta_for(cfg: TrainConfig, mcfg: DVAConfig, step: int, data_mix: dict, metrics: dict | None = None) -> dict:
    return {"config": mcfg.to_dict(), "train": dataclasses.asdict(cfg), "step": step, "commit": ckpt.git_commit(),
            "data_mix": data_mix, "metrics": metrics or {}}


def append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ---- the loop ---------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    with dvakern.backend(cfg.backend):  # this run's kernel switch (--backend), restored after it
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict:
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
    roots = parse_sources(cfg.data).values()
    size = stored_frame_size(roots)
    if size is not None and size != mcfg.img:  # the image size is the data's (PushT renders at any size)
        mcfg = dataclasses.replace(mcfg, img=size)
        if main:
            print(f"[dva.train] the data's frames are {size}x{size}: model img={size}", flush=True)
    rng = stored_action_range(roots)  # a LeRobot source's action space, unless --action-range says
    if rng is not None and "action_range" not in cfg.model_overrides and rng != mcfg.action_range:
        mcfg = dataclasses.replace(mcfg, action_range=rng)
        if main:
            print(f"[dva.train] the data's actions span [{rng[0]:g}, {rng[1]:g}]: model action_range={rng}", flush=True)
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
        ckpt.check_same_run(ckpt.paths(path)[0], meta.get("train", {}), dataclasses.asdict(cfg), RUN_FLAGS)
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

        # A 1x1 conv's weight grad may come back with arbitrary strides on its size-1 dims (the same
        # memory layout); DDP compares strides exactly and warns on every run. Give it plain ones.
        for p in model.parameters():
            if p.requires_grad and 1 in p.shape:
                p.register_hook(lambda g: g.reshape(-1).view(g.shape))
        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    loader = make_loader(cfg, "train", cfg.seq_len, cfg.batch_size, dev, cfg.seed + 1000 * rank, mcfg.img)
    if not loader.has_states and (mcfg.flow_loss or mcfg.body_masks):
        blind = sorted(n for n, s in loader.sources.items() if s.states is None)
        raise DatasetError(f"--data {', '.join(blind)}: no simulator states (frames and actions only), which "
                           f"flow_loss and body_masks need (--flow-loss 0 --body-masks 0, or a PushT dataset)")
    # recorded once, from what was loaded: the source dirs may change on disk during a long run
    data_mix = {"sources": {n: str(s) for n, s in parse_sources(cfg.data).items()}, "mix": cfg.mix,
                "phases": [list(p) for p in make_schedule(cfg).phases],
                "sequences": {n: len(src) for n, src in loader.sources.items()}}
    val_loader = make_loader(cfg, "val", cfg.val_ctx + cfg.val_dream, cfg.val_batch, dev, VAL_SEED, mcfg.img) if main else None

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
        m, dreams = validate(ema.dva, ema.idm, x, batch["actions"].float(), cfg.val_ctx, mcfg.sampler_steps, VAL_SEED,
                             batch["states"])
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
                losses = net(x, actions, generator=gen, states=batch["states"])
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
