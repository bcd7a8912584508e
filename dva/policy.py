"""The DVA as a policy: a video model dreams the next frames, an IDM reads actions off them.

Two layers:

- `DVAPlanner` owns the model, the IDM and the ring KV cache. `observe(frame)` puts a *real*
  frame into the cache (every real frame goes in, in order: the model was trained on 10 Hz
  sequences). `plan(start, committed, h)` dreams h frames from there and returns a `Plan`:
  the first frames are conditioned on the `committed` actions (the ones the controller executes
  anyway while the model thinks), later ones are dreamed freely and the IDM turns each predicted
  frame triple (f_{t-1}, f_t, f_{t+1}) into the action between f_t and f_{t+1}. Predicted frames
  pass through the cache as scratch and are rolled back before `plan` returns, so between calls
  the cache holds real frames only.
- `DVAPolicy` is the protocol interface (`reset(seed)`, `act(obs) -> (2,)`) around a planner:
  lockstep leapfrog with a fixed virtual delay, so evaluation is reproducible.

The real-time runner (dva.control) drives a `DVAPlanner` from an inference thread instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .leapfrog import Leapfrog, LeapfrogConfig, Plan
from .model.config import FREE_ACTIONS

ACTION_LOW, ACTION_HIGH = 0.0, 512.0  # PushT's action space (pixels)
PACKAGED_CHECKPOINT = Path(__file__).parent / "assets" / "dva_s.safetensors"
TRAIN_HINT = ("To make one: collect data (e.g. `python -m dva.collect --policy expert --episodes 200 "
              "--out data/expert`), train with `python -m dva.train` (`--help` and README.md list the "
              "options), then pass the result with --checkpoint PATH.")


@dataclass
class PlannerConfig:
    # ODE steps per predicted frame; None: the checkpoint's `sampler_steps`, which the trainer
    # of the packaged model chose by held-out validation (docs/model.md)
    sample_steps: int | None = None
    # What conditions a freely dreamed frame (beyond the committed actions); None: the
    # checkpoint's `free_action` (DVAConfig; the package's is 'none'). 'none' lets the
    # model dream what the expert would do (it is trained with action dropout), 'prev' feeds the
    # previous planned action (actions change slowly at 10 Hz), 'intent' the action the model's
    # own action head reads off the context it dreams from (DVAConfig.action_aux): the model picks
    # one future in action space, where a median is still an action, and renders it.
    free_action: str | None = None

    def __post_init__(self):
        if self.sample_steps is not None and self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")
        if self.free_action is not None and self.free_action not in FREE_ACTIONS:
            raise ValueError(f"free_action must be one of {FREE_ACTIONS}, got {self.free_action!r}")


class DVAPlanner:
    """Model + IDM + cache: real frames in, plans (predicted frames and actions) out."""

    def __init__(self, model, idm, device: str | torch.device = "cpu", cfg: PlannerConfig | None = None):
        self.model, self.idm = model, idm
        self.device = torch.device(device)
        self.cfg = cfg or PlannerConfig()
        self.free_action = self.cfg.free_action or model.cfg.free_action  # what is actually used
        if self.free_action == "intent" and getattr(model, "action_head", None) is None:
            raise ValueError("free_action='intent' needs a model with an action head (DVAConfig.action_aux > 0); "
                             "this checkpoint has none")
        self.sample_steps = self.cfg.sample_steps or model.cfg.sampler_steps  # the steps actually used
        self.reset(0)

    def reset(self, seed: int) -> None:
        """A new episode: empty cache, no frame history, noise seeded by `seed`."""
        self.cache = self.model.init_cache(1, self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(int(seed))
        self._ctx = self._pctx = None  # contexts of the last real frame and of the one before (their .frame)
        self.frames_seen = 0

    @torch.inference_mode()
    def observe(self, frame: np.ndarray) -> None:
        """Put the next real frame (uint8 (96, 96, 3)) into the cache."""
        if not isinstance(frame, np.ndarray) or frame.shape != (96, 96, 3) or frame.dtype != np.uint8:
            raise ValueError(f"DVAPlanner.observe wants a uint8 (96, 96, 3) frame, got "
                             f"{getattr(frame, 'dtype', type(frame))} {getattr(frame, 'shape', '')}")
        x = self.model.from_frames(torch.from_numpy(frame).to(self.device)[None])  # (1, 3, 96, 96)
        ctx = self.model.observe(self.cache, x)
        self._pctx, self._ctx = (ctx if self._ctx is None else self._ctx), ctx  # first frame: no motion seen yet
        self.frames_seen += 1

    @torch.inference_mode()
    def plan(self, start: int, committed: np.ndarray, horizon: int, executed: np.ndarray | None = None,
             early=None) -> Plan:
        """Dream `horizon` frames after the last observed real frame (the frame of step `start`).

        committed: (n, 2) actions for steps start .. start+n-1 that will be executed whatever
        this plan says; they condition the first n predicted frames and are copied into the plan.
        executed: (2,) the action executed at step start-1 (into the observed frame), or None
        (unknown, e.g. at the start); read by models with DVAConfig.prev_action, as is each
        planned action by the next predicted frame.
        early: called with the plan so far (a Plan up to the action just read) after each free
        action while frames remain to dream: real time submits it, so each action lands as soon
        as it is read, not when the frames that only cover a late next plan are done.
        """
        if self._ctx is None:
            raise RuntimeError("DVAPlanner.plan: observe() a real frame first")
        committed = np.asarray(committed, dtype=np.float64).reshape(-1, 2)
        n = len(committed)
        if not 1 <= horizon or n > horizon:
            raise ValueError(f"plan needs 1 <= horizon and committed <= horizon, got {horizon}, {n}")
        t0 = time.perf_counter()
        m, dev = self.model, self.device
        mark = self.cache.mark(horizon - 1)  # saves just the slots the scratch frames overwrite
        ctx, pctx = self._ctx, self._pctx  # (real or dreamed) frames t and t-1 are their .frame
        frames, actions = [], []
        # a_{t+j} off the real frame's context for j < intent_steps (one head evaluation per plan)
        real_intent = m.intent(ctx, pctx) if self.free_action == "intent" else None
        last_action = None if executed is None else torch.as_tensor(
            np.asarray(executed, dtype=np.float32).reshape(1, 2), device=dev)
        try:
            for j in range(horizon):
                if j < n:
                    cond = torch.from_numpy(committed[j]).float().to(dev)[None]  # (1, 2)
                elif self.free_action == "prev" and j > 0:
                    cond = last_action
                elif self.free_action == "intent":  # then off the frame it is dreamed from
                    cond = (real_intent[:, j] if j < m.cfg.intent_steps else m.intent(ctx, pctx)[:, 0]).clamp(
                        ACTION_LOW, ACTION_HIGH)
                else:
                    cond = None
                noise = torch.randn(ctx.frame.shape, generator=self.gen, device=dev)  # (1, 3, 96, 96)
                # (1, 3, 96, 96), observed as a scratch entry (rolled back below) unless it is the last
                nxt, nctx = m.dream(self.cache, ctx, action=cond, steps=self.sample_steps, noise=noise,
                                   observe=j + 1 < horizon, prev_action=last_action)
                if j < n:
                    a = cond
                else:
                    a = self.idm(pctx.frame, ctx.frame, nxt).float().clamp(ACTION_LOW, ACTION_HIGH)  # (1, 2) pixels
                frames.append(m.to_frames(nxt).cpu().numpy()[0])  # once per frame: early plans reuse it
                actions.append(a)
                last_action = a
                pctx, ctx = ctx, nctx  # nctx.frame is nxt (None after the last frame)
                if early is not None and j >= n and j + 1 < horizon:
                    early(self._as_plan(start, frames, actions, committed, t0))
        finally:
            self.cache.rollback(mark)  # the cache holds real frames only, even after an error
        return self._as_plan(start, frames, actions, committed, t0)

    def _as_plan(self, start, frames, actions, committed, t0) -> Plan:
        out_frames = np.stack(frames)  # (h, 96, 96, 3) uint8
        out_actions = torch.cat(actions).double().cpu().numpy()  # (h, 2)
        n = len(committed)
        out_actions[:n] = committed  # exactly what the controller executes (no float32 round trip)
        return Plan(start=start, actions=out_actions, frames=out_frames, committed=n,
                    latency_s=time.perf_counter() - t0)


# How long a plan of the packaged model takes on one core of the 2-core Intel Xeon (delay 0: one
# frame dreamed and read): act() p50 28-31 ms, p90 31.5 ms (the eval JSONs' act_ms_p50,
# docs/policy.md). A faster device lands sooner; set LockstepConfig.latency_ms to what it measures.
PLAN_LATENCY_MS = 32.0


@dataclass
class LockstepConfig:
    """Lockstep leapfrog: a plan made from the frame of step t takes over at step t + delay;
    plans are launched every `replan` steps and cover delay + replan + margin steps, so the
    controller never runs out. delay=0 acts on the frame just seen, `latency_ms` into that step
    (until then the physics tracks the previous target: the env's hold_substeps), which is what
    `dva.control --realtime` does whenever inference is faster than a step. delay=1 waits for the
    next frame instead (the latency is then hidden in the step before)."""

    delay: int = 0
    replan: int = 1
    margin: int = 0
    latency_ms: float = PLAN_LATENCY_MS

    def __post_init__(self):
        if self.delay < 0 or self.replan < 1 or self.margin < 0:
            raise ValueError(f"LockstepConfig needs delay >= 0, replan >= 1, margin >= 0, got {self}")
        if not 0 <= self.latency_ms < 100:
            raise ValueError(f"LockstepConfig.latency_ms must be in [0, 100) ms (a longer wait is a delay), "
                             f"got {self.latency_ms}")

    @property
    def horizon(self) -> int:
        return self.delay + self.replan + self.margin


class DVAPolicy:
    """The protocol's policy interface around a planner: reads only obs['pixels'].

    Either give a planner, or a checkpoint and free_action (what `python -m dva.eval --policy dva
    --checkpoint PATH [--free-action intent] [--delay 0]` does through the registry in
    dva.pusht.policies; default: the packaged checkpoint).
    Loaded for the CPU, it uses `threads` torch threads (1: eval runs one process per worker, and
    batch-1 inference on the shared 2-core CPU was many times slower with 2 threads).
    """

    def __init__(self, planner: DVAPlanner | None = None, cfg: LockstepConfig | None = None, *,
                 checkpoint: str | Path | None = None, device: str = "auto", threads: int | None = 1,
                 free_action: str | None = None, delay: int | None = None):
        if delay is not None:  # shorthand for cfg=LockstepConfig(delay=delay) (dva.eval --delay)
            if cfg is not None:
                raise ValueError("DVAPolicy: give cfg or delay, not both")
            cfg = LockstepConfig(delay=delay)
        if planner is None:
            dev = resolve_device(device)
            if dev.type == "cpu" and threads:
                torch.set_num_threads(threads)
            planner, _ = load_planner(PACKAGED_CHECKPOINT if checkpoint is None else checkpoint, dev,
                                      PlannerConfig(free_action=free_action))
        elif checkpoint is not None or free_action is not None:
            raise ValueError("DVAPolicy: give a planner or a checkpoint (and its free_action), not both")
        self.planner = planner
        self.cfg = cfg or LockstepConfig()
        self.leap = Leapfrog(LeapfrogConfig(h_init=self.cfg.horizon, h_min=1, h_max=max(self.cfg.horizon, 1)))
        self.step = 0

    def reset(self, seed: int) -> None:
        self.planner.reset(seed)
        self.leap.reset()
        self.step = 0
        self.last_miss = False

    def act(self, obs: dict) -> np.ndarray:
        k, c = self.step, self.cfg
        self.planner.observe(obs["pixels"])
        if k == 0:  # the first plan: nothing runs before it, so it takes over at once
            self._launch(k, np.zeros((0, 2)), at_step=0)
        elif k % c.replan == 0:
            self._launch(k, self.leap.committed(k, c.delay), at_step=k + c.delay)
        a, self.last_miss = self.leap.action(k)
        self.step += 1
        return a

    def _launch(self, k: int, committed: np.ndarray, at_step: int) -> None:
        plan = self.planner.plan(k, committed, self.cfg.horizon, self.leap.executed_into(k))
        self.leap.record_latency(plan.latency_s, plan.horizon)
        self.leap.submit(plan, at_step)

    @property
    def latency_ms(self) -> float:
        """How late in its step each action lands (the protocol's run_episode reads it)."""
        return self.cfg.latency_ms if self.cfg.delay == 0 else 0.0

    @property
    def active_plan(self) -> Plan | None:
        return self.leap.active


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device torch knows ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
    return dev


class CheckpointUnavailable(ValueError):
    """The checkpoint is missing, unreadable or inconsistent; the message says which and why."""


def load_planner(path: str | Path, device, cfg: PlannerConfig | None = None) -> tuple[DVAPlanner, dict]:
    """Load a checkpoint (dva.checkpoint: safetensors + JSON) into a planner in eval mode.
    Every failure is a CheckpointUnavailable naming the file and the reason."""
    from .checkpoint import load, paths

    tensors_file, json_file = paths(path)
    packaged = tensors_file.resolve() == PACKAGED_CHECKPOINT.resolve()
    what = "the packaged checkpoint" if packaged else "checkpoint"
    for f in (tensors_file, json_file):
        if not f.is_file():
            raise CheckpointUnavailable(f"{what} file {f} does not exist. {TRAIN_HINT}")
    try:
        model, idm, meta = load(path, device=device)
    except Exception as e:  # a user error: report the file and the reason, not a traceback
        raise CheckpointUnavailable(f"cannot use {what} {tensors_file}: {e}. {TRAIN_HINT}") from e
    if model is None or idm is None:
        lacks = "video model" if model is None else "IDM"
        raise CheckpointUnavailable(f"{what} {tensors_file} has no {lacks} weights; control needs both. {TRAIN_HINT}")
    return DVAPlanner(model.eval(), idm.eval(), device, cfg), meta
