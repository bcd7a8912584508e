"""Sequence loader: L consecutive frames with their actions, mixed over datasets by a schedule.

A source's frames are the ones it stores (`dva.collect --frames`, or any LeRobot-format folder:
dva.data.lerobot), held in memory as uint8; a PushT source without stored frames is rendered on the
training device from its states (dva.pusht.render_frames, pixel-exact with gym-pusht), so only
states and actions live in memory. Sources with states also give them to the batch (the losses
that need simulator targets read them); a batch from any source without states has none.

A sequence starting at step t of an episode with T steps holds frames t .. t+L-1 and actions
t .. t+L-1 (actions[:, i] leads from frame i to frame i+1; the last one is the action taken
after the last frame), so t ranges over 0 .. T-L and a sequence never crosses an episode end.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from dva.data.store import Dataset, DatasetError, load_dataset
from dva.pusht.render import render_frames


@dataclass(frozen=True)
class MixtureSchedule:
    """Source weights as a function of the training step: piecewise constant phases.

    phases: ((start_step, {source: weight}), ...) sorted by start_step, the first at 0.
    Weights are normalised per phase; a source with weight 0 is not sampled in that phase.
    """

    phases: tuple

    def __post_init__(self):
        if not self.phases or self.phases[0][0] != 0:
            raise ValueError("MixtureSchedule: the first phase must start at step 0")
        starts = [p[0] for p in self.phases]
        if starts != sorted(starts):
            raise ValueError(f"MixtureSchedule: phase starts must be increasing, got {starts}")
        for start, w in self.phases:
            if not w or any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
                raise ValueError(f"MixtureSchedule: phase at step {start} needs non-negative weights "
                                 f"with a positive sum, got {w}")

    @classmethod
    def constant(cls, weights: dict[str, float]) -> "MixtureSchedule":
        return cls(((0, dict(weights)),))

    @classmethod
    def staged(cls, total_steps: int, fractions=(0.3, 0.7)) -> "MixtureSchedule":
        """The training mix of DESIGN.md section 3: random/goal/expert 70/15/15, then 0/20/80
        from fractions[0] of training, then 0/5/95 from fractions[1]."""
        a, b = (int(round(f * total_steps)) for f in fractions)
        return cls(((0, {"random": 0.70, "goal": 0.15, "expert": 0.15}),
                    (a, {"random": 0.0, "goal": 0.20, "expert": 0.80}),
                    (b, {"random": 0.0, "goal": 0.05, "expert": 0.95})))

    @property
    def sources(self) -> set[str]:
        return {k for _, w in self.phases for k in w}

    def weights(self, step: int) -> dict[str, float]:
        w = self.phases[0][1]
        for start, pw in self.phases:
            if step >= start:
                w = pw
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}


def stored_frame_size(roots) -> int | None:
    """The side of the frames the datasets store (LeRobot: its info.json; dva: 96 when collected
    with --frames), None when every one renders from states. Cheap: reads metadata only."""
    from dva.data import lerobot
    from dva.data.store import Manifest

    sizes = {}
    for r in roots:
        if lerobot.is_lerobot(r):
            sizes[r] = lerobot.frame_size(r)
        else:
            shards = Manifest.load(r).shards
            if shards and all(s.get("frames") for s in shards):
                sizes[r] = 96
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"datasets store frames of different sizes: {sizes}")
    return next(iter(sizes.values()), None)


def stored_action_range(roots) -> tuple[float, float] | None:
    """The (low, high) of the actions the LeRobot datasets among roots declare in their stats
    (their union), None when there are none (dva's PushT datasets: the model's default)."""
    from dva.data import lerobot

    ranges = [lerobot.action_range(r) for r in roots if lerobot.is_lerobot(r)]
    if not ranges:
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def is_val_episode(source: str, episode: int, val_fraction: float) -> bool:
    """Deterministic held-out choice: a hash of (source name, episode index)."""
    h = hashlib.sha256(f"{source}:{episode}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < val_fraction


class _Source:
    """One dataset's tensors on the device and its valid sequence starts for one split."""

    def __init__(self, name: str, ds: Dataset, seq_len: int, split: str, val_fraction: float, device):
        self.name = name
        starts_s, starts_a = [], []
        for i in range(len(ds.steps)):
            if is_val_episode(name, int(ds.episode[i]), val_fraction) != (split == "val"):
                continue
            n = int(ds.steps[i]) - seq_len + 1  # starts t = 0 .. T-L
            if n <= 0:
                continue
            t = np.arange(n)
            starts_s.append(ds.state_start[i] + t)
            starts_a.append(ds.action_start[i] + t)
        if not starts_s:
            raise DatasetError(f"{ds.root}: no {split} sequences of length {seq_len} "
                               f"({len(ds.steps)} episodes, longest {int(ds.steps.max())} steps)")
        self.state_start = torch.from_numpy(np.concatenate(starts_s)).to(device)
        self.action_start = torch.from_numpy(np.concatenate(starts_a)).to(device)
        # float64 states: exact re-rendering; None for a frames-only source (LeRobot)
        self.states = None if ds.states is None else torch.from_numpy(ds.states).to(device)
        self.agent_vel = None if ds.agent_vel is None else torch.from_numpy(ds.agent_vel).to(device=device, dtype=torch.float32)
        self.frames = None if ds.frames is None else torch.from_numpy(ds.frames).to(device)  # uint8 (S, H, W, 3)
        self.actions = torch.from_numpy(ds.actions).to(device=device, dtype=torch.float32)
        self.n_episodes = sum(1 for _ in starts_s)

    def __len__(self) -> int:
        return len(self.state_start)


class SequenceLoader:
    """Samples batches of L-frame sequences from named datasets, mixed by a schedule.

    batch = loader.sample(step) -> {"frames": uint8 (B, L, S, S, 3) on device,
    "actions": float32 (B, L, 2) pixels, "states": float32 (B, L, 5) or None, "agent_vel": float32
    (B, L, 2) or None, "source": list[str]}. Sampling is a pure function of (seed, step, split), so a
    resumed run sees the same batches. S is `size`, or the stored frames' size (all sources with
    stored frames must agree with it).
    """

    def __init__(self, sources: dict[str, str], seq_len: int, batch_size: int,
                 schedule: MixtureSchedule | None = None, device="cpu", seed: int = 0,
                 split: str = "train", val_fraction: float = 0.05, size: int = 96):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if not sources:
            raise ValueError("SequenceLoader: no sources given")
        schedule = schedule or MixtureSchedule.constant({k: 1.0 for k in sources})
        unknown = sorted(schedule.sources - set(sources))
        if unknown:
            raise ValueError(f"schedule names sources {unknown} that were not given "
                             f"(given: {sorted(sources)})")
        self.seq_len, self.batch_size, self.schedule = seq_len, batch_size, schedule
        self.device, self.seed, self.split, self.size = torch.device(device), seed, split, size
        self.names = sorted(sources)
        self.sources = {}
        for name in self.names:
            ds = load_dataset(sources[name])
            if ds.frames is not None and ds.frames.shape[1] != size:
                raise DatasetError(f"{sources[name]}: frames are {ds.frames.shape[1]}x{ds.frames.shape[2]}, "
                                   f"the model takes {size}x{size}")
            self.sources[name] = _Source(name, ds, seq_len, split, val_fraction, self.device)
        self.has_states = all(s.states is not None for s in self.sources.values())

    def _generator(self, step: int) -> torch.Generator:
        salt = 0 if self.split == "train" else 1
        g = torch.Generator()  # on CPU: identical draws on every device
        g.manual_seed((self.seed * 1_000_003 + step * 2 + salt) % (2**63 - 1))
        return g

    def sample(self, step: int, frames: bool = True) -> dict:
        """The batch for training step `step`; frames=False skips rendering ("frames" is None)."""
        B, L = self.batch_size, self.seq_len
        g = self._generator(step)
        w = self.schedule.weights(step)
        probs = torch.tensor([w.get(n, 0.0) for n in self.names], dtype=torch.float64)
        which = torch.multinomial(probs, B, replacement=True, generator=g)  # (B,) source ids
        u = torch.rand(B, generator=g, dtype=torch.float64)  # uniform start within its source
        ar = torch.arange(L, device=self.device)
        states = torch.zeros(B, L, 5, dtype=torch.float64, device=self.device)
        vel = torch.zeros(B, L, 2, dtype=torch.float32, device=self.device)
        actions = torch.empty(B, L, 2, dtype=torch.float32, device=self.device)
        img = torch.empty(B, L, self.size, self.size, 3, dtype=torch.uint8, device=self.device) if frames else None
        render = torch.zeros(B, dtype=torch.bool)  # rows whose frames come from states
        names = [""] * B
        for k, name in enumerate(self.names):
            rows = (which == k).nonzero().flatten()
            if len(rows) == 0:
                continue
            src = self.sources[name]
            pick = (u[rows] * len(src)).long().clamp(max=len(src) - 1).to(self.device)
            si = (src.state_start[pick].unsqueeze(1) + ar)  # (b, L) state rows
            ai = (src.action_start[pick].unsqueeze(1) + ar)  # (b, L) action rows
            rd = rows.to(self.device)
            if src.states is not None:
                states[rd] = src.states[si]
                vel[rd] = src.agent_vel[si]
            actions[rd] = src.actions[ai]
            if frames and src.frames is not None:
                img[rd] = src.frames[si]
            elif frames:
                render[rows] = True
            for r in rows.tolist():
                names[r] = name
        if render.any():
            rd = render.nonzero().flatten().to(self.device)
            img[rd] = render_frames(states[rd].view(-1, 5), self.size).view(len(rd), L, self.size, self.size, 3)
        st = (states.float(), vel) if self.has_states else (None, None)
        return {"frames": img, "actions": actions, "states": st[0], "agent_vel": st[1], "source": names}

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources.values())
