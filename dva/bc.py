"""Pixel behaviour cloning: the peer the DVA has to beat at equal data and compute.

The usual image-BC recipe: a CNN reads the last two camera frames and regresses the next
`chunk` actions (absolute, in PushT's 512 px action space), trained with random-shift
augmentation on the same expert episodes as the DVA; the policy executes `execute` of each
predicted chunk before it looks again (default 1: it replans every step, chosen on the dev seeds;
docs/policy.md). No video model, no IDM: the comparison that says whether
the DVA learns more per demonstration than plain BC (issue 21, docs/policy.md).

    python -m dva.bc --data data/expert --steps 7000 --out runs/bc        # train (resumes)
    python -m dva.bc --data data/expert:0.35 data/approach:0.15 data/recovery_pkg:0.5 ...  # a mix
    python -m dva.bc --init runs/bc/bc --data ... --steps 3000 --out runs/bc_ft   # fine-tune on another mix
    python -m dva.eval --policy bc --checkpoint runs/bc/bc --seeds dev   # closed loop

Training is deterministic by step (batch and augmentation from a generator seeded by
(seed, step)) and writes OUT/bc (bc.safetensors + bc.json, dva.checkpoint's format) every `--save-every` seconds
and at the end, with the optimizer state, so re-running the same command continues exactly where it stopped.
Ctrl-C saves and exits. A resume checks that it is the same run: --steps, --batch, --lr, --seed, the
source weights and the data's content (a re-collection of the same seeds resumes; other data is refused).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACTION_SCALE = 256.0  # actions / 256 - 1: PushT's [0, 512] action space to [-1, 1]


@dataclass
class BCConfig:
    chunk: int = 8      # actions predicted per look
    width: int = 32     # channels of the first conv; doubled at each of the 4 stride-2 stages, capped at 128
    hidden: int = 512   # MLP width after the flattened 6x6 features
    shift: int = 4      # random-shift augmentation: pad this many pixels (replicate), crop back to 96


class BCNet(nn.Module):
    """(B, 2, 96, 96, 3) uint8 frames (previous, current) -> (B, chunk, 2) actions in [-1, 1]."""

    def __init__(self, cfg: BCConfig):
        super().__init__()
        self.cfg = cfg
        chans = [6, cfg.width] + [min(cfg.width * 2 ** i, 128) for i in range(4)]
        layers = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, cout), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)  # 96 -> 48 -> 24 -> 12 -> 6 (flattened: positions matter)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 36, cfg.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.hidden, cfg.chunk * 2))

    @staticmethod
    def to_input(frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 2, H, W, 3) -> float (B, 6, H, W) in [-0.5, 0.5]."""
        B, n, H, W, C = frames.shape
        return frames.permute(0, 1, 4, 2, 3).reshape(B, n * C, H, W).float() / 255.0 - 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).view(-1, self.cfg.chunk, 2)


def random_shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """DrQ's augmentation: the same random integer shift (within +-pad) for all channels of a sample."""
    if pad == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, B), generator=gen)
    rows = (dy[:, None] + torch.arange(H))[:, None, :, None].expand(B, C, H, W + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W))[:, None, None, :].expand(B, C, H, W)
    return out.gather(3, cols)


class BCData:
    """Every frame of the datasets rendered once (uint8, in memory) with the index of its
    predecessor and its next `chunk` actions (the last action repeated past an episode's end).

    sources: a dataset folder, or (folder, weight) pairs: a batch draws each sample's source by
    weight (the DVA trainer's --mix, one phase), then a frame of it uniformly."""

    def __init__(self, sources, chunk: int, progress: bool = True):
        from dva.data.store import load_dataset
        from dva.pusht.render import render_frames

        if isinstance(sources, (str, Path)):
            sources = [(sources, 1.0)]
        frames, cur, prev, acts, self.sizes, self.digests = [], [], [], [], [], []
        base = 0
        for root, _ in sources:
            ds = load_dataset(root, progress=progress, frames=False)
            h = hashlib.sha256()  # what the samples are made of (a re-collection of the same seeds matches)
            for a in (ds.steps, ds.states, ds.actions):
                h.update(np.ascontiguousarray(a).tobytes())
            self.digests.append(h.hexdigest()[:16])
            frames.append(render_frames(torch.from_numpy(ds.states)))  # (N, 96, 96, 3) uint8 (chunked on the CPU)
            n0 = len(cur)
            for i in range(len(ds.steps)):
                s, a, T = int(ds.state_start[i]) + base, int(ds.action_start[i]), int(ds.steps[i])
                t = np.arange(T)  # frames with an action after them (not the episode's last)
                cur.append(s + t)
                prev.append(s + np.maximum(t - 1, 0))  # the first frame is its own predecessor, as at reset
                acts.append(ds.actions[a + np.minimum(t[:, None] + np.arange(chunk), T - 1)])
            self.sizes.append(int(sum(len(c) for c in cur[n0:])))
            base += len(frames[-1])
        self.frames = frames[0] if len(frames) == 1 else torch.cat(frames)
        self.cur, self.prev = torch.from_numpy(np.concatenate(cur)), torch.from_numpy(np.concatenate(prev))
        self.actions = torch.from_numpy(np.concatenate(acts)).float() / ACTION_SCALE - 1.0  # (M, chunk, 2)
        self.weights = torch.tensor([float(w) for _, w in sources], dtype=torch.float64)
        self._sizes = torch.tensor(self.sizes)
        self.starts = torch.cumsum(self._sizes, 0) - self._sizes

    def __len__(self) -> int:
        return len(self.cur)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n sample indices: uniform with one source, else the source by weight, then uniform in it."""
        if len(self.sizes) == 1:
            return torch.randint(0, len(self), (n,), generator=gen)
        src = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        return self.starts[src] + (u * self._sizes[src]).long()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.stack([self.frames[self.prev[idx]], self.frames[self.cur[idx]]], 1)
        return BCNet.to_input(frames), self.actions[idx]


def parse_data(items) -> list[tuple[Path, float]]:
    """--data items 'DIR' or 'DIR:WEIGHT' -> [(dir, weight)]; names the bad item."""
    out = []
    for it in items:
        path, sep, w = str(it).rpartition(":")
        if not sep:
            path, w = str(it), "1"
        try:
            weight = float(w)
        except ValueError:
            raise ValueError(f"--data {it!r}: expected DIR or DIR:WEIGHT") from None
        if not weight > 0:
            raise ValueError(f"--data {it!r}: the weight must be > 0")
        if not Path(path).is_dir():
            raise ValueError(f"--data {it!r}: directory {path} does not exist")
        out.append((Path(path), weight))
    return out


RUN_FLAGS = {"steps": "--steps", "batch": "--batch", "lr": "--lr", "seed": "--seed", "weights": "--data weights",
             "data_sha": "--data contents (sha256 of steps, states, actions)"}


def lr_at(step: int, steps: int, lr: float, warmup: int = 200) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def load_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict, BCConfig]:
    """(tensors, meta, config) of a BC checkpoint (dva.checkpoint's safetensors + JSON; a stem,
    x.json or x.safetensors). Raises ValueError naming the file and the reason."""
    from dva.checkpoint import read

    tensors, meta = read(path)
    try:
        return tensors, meta, BCConfig(**meta["config"])
    except TypeError as e:
        raise ValueError(f"{path}: not a BC checkpoint ({e}; train one: python -m dva.bc --help)") from None


def train(args) -> int:
    from tqdm import tqdm

    from dva import checkpoint as ckpt

    out = args.out / "bc"  # bc.safetensors + bc.json
    torch.manual_seed(args.seed)
    init = None  # the tensors a fine-tune starts from (--init)
    if ckpt.paths(out)[1].exists():
        tensors, meta, cfg = load_checkpoint(out)
        print(f"[dva.bc] resuming {out} at step {meta['step']} ({meta['seconds'] / 60:.1f} min trained)", flush=True)
    elif args.init:  # a fine-tune: the weights and model config of another run, a fresh optimizer and schedule
        (init, _, cfg), meta = load_checkpoint(args.init), None
        print(f"[dva.bc] new run from the weights of {args.init}", flush=True)
    else:
        meta, cfg = None, BCConfig(chunk=args.chunk, width=args.width, hidden=args.hidden, shift=args.shift)
    net = BCNet(cfg).to(memory_format=torch.channels_last)  # ~1.5x faster convs on the CPU
    if init is not None:
        ckpt.load_into(net, ckpt.section(init, "model"), str(args.init))
    init_from = meta.get("init", "") if meta is not None else str(args.init or "")  # kept across resumes
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    step, seconds, log, (loss_sum, n) = 0, 0.0, [], (0.0, 0)  # (loss_sum, n): the log line being summed
    if meta is not None:
        ckpt.load_into(net, ckpt.section(tensors, "model"), str(out))
        ckpt.load_optimizer(opt, tensors, out)
        step, seconds, log, (loss_sum, n) = meta["step"], meta["seconds"], meta["log"], meta["window"]
    sources = parse_data(args.data)
    data = BCData(sources, cfg.chunk)
    run = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
           "weights": [w for _, w in sources], "data_sha": data.digests}  # what a resume must repeat
    if meta is not None and "run" in meta:
        ckpt.check_same_run(out, meta["run"], run, RUN_FLAGS)
    elif meta is not None:
        print(f"[dva.bc] {out} predates the resume check: recording this command's flags and data", flush=True)
    names = ", ".join(f"{d} ({n} x {w:g})" for (d, w), n in zip(sources, data.sizes))
    print(f"[dva.bc] {len(data)} samples from {names}, {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M "
          f"parameters, batch {args.batch}, {args.steps} steps", flush=True)

    def checkpoint():
        ckpt.save(out, {**{f"model.{k}": v for k, v in net.state_dict().items()}, **ckpt.optimizer_tensors(opt)},
                  {"config": dataclasses.asdict(cfg), "step": step, "seconds": seconds, "log": log,
                   "window": [loss_sum, n], "data": [f"{d}:{w:g}" for d, w in sources],
                   "init": init_from, "run": run})

    pbar = tqdm(total=args.steps, initial=step, desc="bc", dynamic_ncols=True, mininterval=2.0)
    last_save = time.perf_counter()
    try:
        while step < args.steps:
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
            x, y = data.batch(data.sample(args.batch, gen))
            x = random_shift(x, cfg.shift, gen).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.steps, args.lr)
            loss = F.l1_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seconds += time.perf_counter() - t0
            loss_sum, n = loss_sum + loss.item(), n + 1
            pbar.update()
            if step % 100 == 0 or step == args.steps:
                # mean |error| over the chunk, in the env's pixels (x256)
                log.append({"step": step, "seconds": round(seconds, 1), "l1_px": round(loss_sum / n * ACTION_SCALE, 2)})
                pbar.set_postfix(l1_px=log[-1]["l1_px"])
                loss_sum, n = 0.0, 0
            if time.perf_counter() - last_save > args.save_every:
                checkpoint()
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        print("\n[dva.bc] interrupted: saving", flush=True)
    checkpoint()
    pbar.close()
    print(f"[dva.bc] step {step}/{args.steps}, {seconds / 60:.1f} min of training -> {out}", flush=True)
    return 0


class BCPolicy:
    """The protocol interface (`reset(seed)`, `act(obs)`) around a trained BCNet.

    Uses `threads` torch threads (1, as DVAPolicy: eval runs one process per worker, and two
    workers with two threads each on the 2-core CPU ran 50 dev seeds for over 10 minutes unfinished;
    with one thread each, 27 s).
    """

    # how late in its step each action lands (the protocol's run_episode reads it): act() takes
    # 2.6-3.1 ms (p50) on one core of the 2-core Xeon, one 10 ms physics substep
    latency_ms = 3.0

    def __init__(self, checkpoint, execute: int | None = None, threads: int | None = 1):
        from dva.checkpoint import load_into, section

        if threads:
            torch.set_num_threads(threads)
        tensors, _, cfg = load_checkpoint(checkpoint)
        self.net = BCNet(cfg)
        load_into(self.net, section(tensors, "model"), str(checkpoint))
        self.net.eval()
        self.execute = execute or 1  # chosen on the dev seeds: 1 (0.815) > 2 (0.793) > 4 (0.727) > 8 (0.426)
        if not 1 <= self.execute <= cfg.chunk:
            raise ValueError(f"execute must be in 1..{cfg.chunk}, got {self.execute}")

    def reset(self, seed: int) -> None:
        self.prev, self.plan, self.k = None, None, 0

    @torch.inference_mode()
    def predict(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """The next `chunk` actions (chunk, 2) px from two uint8 (96, 96, 3) frames."""
        x = BCNet.to_input(torch.from_numpy(np.stack([prev, cur]))[None])
        return ((self.net(x)[0] + 1.0) * ACTION_SCALE).clamp(0, 512).double().numpy()

    def act(self, obs: dict) -> np.ndarray:
        cur = obs["pixels"]
        prev = cur if self.prev is None else self.prev  # the first frame is its own predecessor
        self.prev = cur
        if self.plan is None or self.k >= self.execute:
            self.plan, self.k = self.predict(prev, cur), 0
        self.k += 1
        return self.plan[self.k - 1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dva.bc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["data/expert"],
                   help="datasets (dva.collect), each DIR or DIR:WEIGHT: a sample's source is drawn by weight "
                        "(e.g. data/expert:0.35 data/approach:0.15 data/recovery_pkg:0.5, the mix the DVA trained on)")
    p.add_argument("--out", type=Path, default=Path("runs/bc"), help="run folder; OUT/bc is resumed if present (with the flags and data it started with: checked)")
    p.add_argument("--steps", type=int, default=7000, help="optimizer steps (cosine LR to zero at the last)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--init", type=Path, default=None,
                   help="start a new run from this BC checkpoint's weights and model config (a fine-tune, e.g. "
                        "on a mix with new recovery data); a fresh optimizer and LR schedule")
    for f in dataclasses.fields(BCConfig):
        p.add_argument(f"--{f.name}", type=int, default=f.default, help=f"model: {f.name} (new runs only)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        p.error("--steps and --batch must be >= 1")
    try:
        return train(args)
    except ValueError as e:  # bad dataset or checkpoint: the message names the file
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
