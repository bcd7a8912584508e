"""Leapfrog scheduling: which action runs at each control step, and how far each plan must look.

A plan is made from the real frame of step t: actions for steps t .. t+h-1 (action j leads from
frame t+j to t+j+1). It becomes *active* some steps later (when inference finishes); from then on
the controller executes its actions until the next plan activates. While the model thinks, the
previous plan keeps running, so the first `n` actions of a new plan are already decided
("committed"): the plan is conditioned on them and only its later actions are new. That is what
makes consecutive plans join without jerks (DESIGN.md section 2).

This module is pure bookkeeping on step indices (numpy only, no torch, no clock): the real-time
runner feeds it measured latencies, the lockstep runner a fixed virtual delay. It is thread-safe
because the real-time runner calls it from the control thread and the inference thread.

Memory is bounded whatever the run length (the endurance run does 100,000 steps): statistics live
in fixed-size rings, executed actions in a short history.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class LeapfrogConfig:
    """How far plans look ahead. Steps are control steps of `dt` seconds (gym-pusht: 10 Hz)."""

    dt: float = 0.1  # control period (s)
    # steps of slack beyond what the latency estimate needs. 0: real time submits each action as
    # soon as it is read, so the later frames only cover a next plan that is late (with 1 and the
    # rule of stop 35, on the 2-core CPU the package's plans went from 3 frames at ~90 ms to
    # 5 frames at p50 259 ms; docs/control.md)
    margin: int = 0
    # how far into its step a plan is scheduled to land its action for it (the physics tracks the
    # old target until then; real time waits up to the step's last substep, 0.9). 0.7 leaves
    # 20 ms for a plan slower than its estimate: on the 2-core CPU 0.9 missed 3.7% of steps at
    # full speed and 2.7% at 45 ms per frame, 0.7 0.15% and 6.8%, the rule before 2.3% and 15.7%
    land_by: float = 0.7
    h_init: int = 4  # horizon before any latency has been measured
    h_min: int = 2
    h_max: int = 16
    quantile: float = 0.9  # the latency estimate is this quantile of recent plans (scaled to the horizon)
    window: int = 16  # recent plans the estimate looks at

    def __post_init__(self):
        if self.dt <= 0:
            raise ValueError(f"LeapfrogConfig.dt must be > 0, got {self.dt}")
        if not 1 <= self.h_min <= self.h_init <= self.h_max:
            raise ValueError(f"LeapfrogConfig needs 1 <= h_min <= h_init <= h_max, got "
                             f"{self.h_min}, {self.h_init}, {self.h_max}")
        if self.margin < 0 or self.window < 1 or not 0 < self.quantile <= 1:
            raise ValueError("LeapfrogConfig: margin >= 0, window >= 1, 0 < quantile <= 1")


class RingStats:
    """Percentiles over the last `capacity` samples, plus exact count / mean / max over all of them.

    Fixed memory: an endless control run must not grow (episode metrics stay exact: an episode
    has at most a few hundred samples, far below the capacity).
    """

    def __init__(self, capacity: int = 10_000):
        self._buf = np.zeros(capacity, dtype=np.float64)
        self.count = 0
        self._sum = 0.0
        self.max = 0.0

    def add(self, x: float) -> None:
        self._buf[self.count % len(self._buf)] = x
        self.count += 1
        self._sum += x
        self.max = max(self.max, x)

    def values(self) -> np.ndarray:
        return self._buf[: min(self.count, len(self._buf))]

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.values(), q)) if self.count else float("nan")

    @property
    def mean(self) -> float:
        return self._sum / self.count if self.count else float("nan")

    def summary(self, scale: float = 1.0) -> dict:
        """{'n', 'mean', 'p50', 'p99', 'max'}, each value times `scale` (e.g. 1e3 for ms)."""
        if not self.count:
            return {"n": 0, "mean": None, "p50": None, "p99": None, "max": None}
        return {"n": self.count, "mean": self.mean * scale, "p50": self.quantile(0.5) * scale,
                "p99": self.quantile(0.99) * scale, "max": self.max * scale}


@dataclass
class Plan:
    """One prediction made from the real frame of step `start`.

    actions: (h, 2) float pointer targets for steps start .. start+h-1 (pixel units);
    frames: (h, 96, 96, 3) uint8 predicted frames for steps start+1 .. start+h (or None);
    committed: how many leading actions were given (the ones already being executed);
    latency_s: wall time inference took (0 when not measured).
    """

    start: int
    actions: np.ndarray
    frames: np.ndarray | None = None
    committed: int = 0
    latency_s: float = 0.0

    @property
    def horizon(self) -> int:
        return len(self.actions)

    def covers(self, step: int) -> bool:
        return self.start <= step < self.start + len(self.actions)

    def action(self, step: int) -> np.ndarray:
        return self.actions[step - self.start]

    def frame(self, step: int) -> np.ndarray | None:
        """The predicted frame for `step` (None outside the plan or for its own real frame)."""
        if self.frames is None or not self.start < step <= self.start + len(self.frames):
            return None
        return self.frames[step - self.start - 1]


class Leapfrog:
    """The controller's side of leapfrog inference: active plan, action per step, statistics."""

    HISTORY = 64  # executed actions kept (a plan's frame is at most this many steps old)

    def __init__(self, cfg: LeapfrogConfig | None = None):
        self.cfg = cfg or LeapfrogConfig()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.active: Plan | None = None
            self.last_target: np.ndarray | None = None
            self._executed = np.zeros((self.HISTORY, 2), dtype=np.float64)
            self._last_step = -1
            self._lat = np.zeros((self.cfg.window, 3))  # (dreaming s, horizon, observing s per frame) of recent plans
            self._n_lat = 0
            self._pending: deque[tuple[int, Plan]] = deque()
            self.misses = 0
            self.stale = 0
            self.plans = 0
            self.steps = 0
            self.latency = RingStats()  # per plan, seconds
            self.jump = RingStats()  # |a_k - a_(k-1)| where a new plan's own actions start, pixels
            self.delta = RingStats()  # |a_k - a_(k-1)| at every other executed (non-held) step
            self._join_step = -1
            self.horizons = RingStats()  # per plan made (record_latency)

    # -- the inference side -------------------------------------------------------------------
    def record_latency(self, seconds: float, horizon: int, fixed_s: float = 0.0, waited_s: float = 0.0,
                       observed: int = 1) -> None:
        """A plan of `horizon` frames took `seconds` from its launch to being usable, of which
        `fixed_s` does not grow with the horizon: observing the `observed` real frames that had
        arrived. Its frame had waited `waited_s` before that for the previous plan to finish.

        The horizon is chosen for a plan launched as its frame arrives, with that one frame to
        observe: the wait and the extra frames are the previous plan's length, and counting them
        as this plan's cost made the next plan longer, its frames wait longer and more of them
        pile up: real time locked into 4-16-frame plans of 200-800 ms that way (docs/control.md).
        The latency statistics report the whole time from the frame."""
        with self._lock:
            fixed = min(fixed_s, seconds)
            self._lat[self._n_lat % self.cfg.window] = (seconds - fixed, horizon, fixed / max(observed, 1))
            self._n_lat += 1
            self.latency.add(waited_s + seconds)
            self.horizons.add(horizon)  # frames planned (real time submits the first one early too)

    def delay_steps(self, horizon: int) -> int:
        """Estimated control steps until a plan of `horizon` frames launched now becomes active
        at a step boundary (rounded up; at least 1)."""
        with self._lock:
            return self._delay_steps(horizon)

    def landing_steps(self, horizon: int, waited_s: float = 0.0) -> int:
        """Whole control steps a plan launched now, from a frame that has already waited
        `waited_s`, cannot reach: the actions it must take as committed. Real time submits each
        action as soon as it is read, so that is the first step k whose action (after k + 1
        dreamed frames) lands within step k (`land_by`): 0 when inference is faster than a step;
        1 before any measurement; `horizon` when no action of the plan lands in time."""
        with self._lock:
            return self._landing_steps(horizon, waited_s)

    def _landing_steps(self, horizon: int, waited_s: float, observed: int = 1) -> int:
        if self._n_lat == 0:
            return 1
        for k in range(horizon):
            if waited_s + self._estimate(k + 1, observed) <= (k + self.cfg.land_by) * self.cfg.dt:
                return k
        return horizon

    def _estimate(self, horizon: int, observed: int = 1) -> float | None:
        n = min(self._n_lat, self.cfg.window)
        if n == 0:
            return None
        dream, hs, fixed = self._lat[:n, 0], self._lat[:n, 1], self._lat[:n, 2]
        # Scale each measured plan to `horizon` frames: the dreaming part is linear in frames,
        # the fixed part (observing the real frames that arrived, `observed`) is not.
        return float(np.quantile(fixed * observed + dream * horizon / np.maximum(hs, 1), self.cfg.quantile))

    def _delay_steps(self, horizon: int) -> int:
        est = self._estimate(horizon)
        return 1 if est is None else max(1, math.ceil(est / self.cfg.dt))

    def horizon(self, waited_s: float = 0.0) -> int:
        """Frames the next plan should predict so the controller never runs out of actions; its
        frame has already waited `waited_s` (known at launch) for the previous plan.

        Real time submits each action as soon as it is read, so a plan launched from the frame of
        step t must reach past its own committed steps (`landing_steps`) and last until the
        *next* plan's actions take over: that one launches when this one is done (or at the next
        frame, if that is later), observes the frames that arrived meanwhile, plans from the
        newest, and must land its action for step t+h within that step; `margin` steps early.
        """
        c = self.cfg
        with self._lock:
            if self._n_lat == 0:
                return c.h_init
            for h in range(c.h_min, c.h_max + 1):
                launch = max(waited_s + self._estimate(h), c.dt)  # the next plan's, after frame t
                k = math.floor(launch / c.dt)  # the newest frame then is t + k
                if (self._landing_steps(h, waited_s) < h and k <= h - c.margin
                        and self._landing_steps(h - k + 1, launch - k * c.dt, observed=k) <= h - k - c.margin):
                    return h
            # Too slow to keep up (about a period per predicted frame): gaps, i.e. deadline
            # misses, are unavoidable and their share hardly depends on h, so take the shortest
            # plan that still outlives its own latency: its actions are the freshest.
            for h in range(c.h_min, c.h_max + 1):
                if h > self._delay_steps(h):
                    return h
            return c.h_max

    def target(self, step: int) -> np.ndarray | None:
        """What runs at `step` unless a plan still pending takes over: the active plan's action,
        else the held target (None before the first action)."""
        with self._lock:
            if self.active is not None and self.active.covers(step):
                return np.array(self.active.action(step), dtype=np.float64)
            return None if self.last_target is None else self.last_target.copy()

    def executed_into(self, step: int) -> np.ndarray | None:
        """The action executed at step - 1 (the one that led into frame `step`), or None when it is
        not in the history (the first step of an episode)."""
        with self._lock:
            s = step - 1
            if 0 <= s <= self._last_step and self._last_step - s < self.HISTORY:
                return self._executed[s % self.HISTORY].copy()
            return None

    def committed(self, start: int, n: int) -> np.ndarray:
        """(n, 2) actions the controller will execute at steps start .. start+n-1 unless a plan
        submitted after this call takes over: executed ones from history, then the submitted /
        active plans as they will take over, then the held target."""
        with self._lock:
            out = np.zeros((max(n, 0), 2))
            for j in range(n):
                s = start + j
                if s <= self._last_step and self._last_step - s < self.HISTORY:
                    out[j] = self._executed[s % self.HISTORY]
                    continue
                plan = self.active
                for at, p in self._pending:  # later submissions win, as they will in action()
                    if at <= s:
                        plan = p
                if plan is not None and plan.covers(s):
                    out[j] = plan.action(s)
                elif j > 0:
                    out[j] = out[j - 1]  # the controller will hold this target
                elif self.last_target is not None:
                    out[j] = self.last_target
                else:
                    raise RuntimeError(f"no action known for step {s}: submit a first plan before "
                                       f"committing to later ones")
            return out

    # -- the control side ---------------------------------------------------------------------
    def submit(self, plan: Plan, at_step: int | None = None) -> None:
        """Hand over a finished plan; it takes over at the first `action(step)` with
        step >= at_step (None: the very next one). Called from the inference thread."""
        with self._lock:
            self._pending.append((plan.start if at_step is None else at_step, plan))

    def _activate(self, plan: Plan, step: int) -> None:
        # Where the plan's own actions start being executed: its committed prefix repeats what
        # runs anyway, so the join is at the first free action (or at take-over if that is later).
        self._join_step = max(step, plan.start + plan.committed)
        # real time submits a plan as it grows (each free action as it is read, then the whole
        # plan): a longer version of the active plan is not another plan
        if self.active is None or plan.start != self.active.start or plan.horizon <= self.active.horizon:
            self.plans += 1
        self.active = plan

    def action(self, step: int) -> tuple[np.ndarray, bool]:
        """The pointer target for `step` and whether it was a deadline miss (no plan covered it,
        so the last target is held). Plans submitted for this step take over first."""
        with self._lock:
            while self._pending and self._pending[0][0] <= step:
                _, plan = self._pending.popleft()
                if plan.covers(step):
                    self._activate(plan, step)
                else:  # arrived after its last step: inference fell behind the horizon
                    self.stale += 1
            miss = self.active is None or not self.active.covers(step)
            if miss:
                if self.last_target is None:
                    raise RuntimeError("no plan has been submitted yet: nothing to execute")
                a = self.last_target
                self.misses += 1
            else:
                a = np.array(self.active.action(step), dtype=np.float64)
            if self.last_target is not None and not miss:
                # the jump where a new plan's actions take over vs every other step's change
                d = float(np.linalg.norm(a - self.last_target))
                (self.jump if step == self._join_step else self.delta).add(d)
            self.last_target = a
            self._executed[step % self.HISTORY] = a
            self._last_step = step
            self.steps += 1
            return a.copy(), miss

    def stats(self) -> dict:
        """Plain-JSON statistics of the run so far (latency in ms, jumps in pixels)."""
        with self._lock:
            return {"steps": self.steps, "plans": self.plans, "deadline_misses": self.misses,
                    "stale_plans": self.stale,
                    "latency_ms": self.latency.summary(1e3), "action_jump_px": self.jump.summary(),
                    "action_delta_px": self.delta.summary(),
                    "horizon": self.horizons.summary()}
