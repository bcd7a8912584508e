"""Data policies (random smooth motion, goal heuristic) and the policy registry.

Policy interface (everything the protocol can evaluate):
    policy.reset(seed: int) -> None
    policy.act(obs: dict) -> np.ndarray (2,) float pointer target in [0, 512] pixels
with obs = {"pixels": uint8 (96, 96, 3), "state": float64 (5,), "agent_vel": float64 (2,)}.
Privileged policies read obs["state"] / obs["agent_vel"]; a video policy reads obs["pixels"].

Both policies here move the pointer like a steady hand: the pointer's step is bounded and
smoothed, so a video model can learn the motion.
"""
from __future__ import annotations

import importlib
import math

import numpy as np

GOAL = np.array([256.0, 256.0, math.pi / 4])
BLOCK_COG = np.array([0.0, 45.0])  # the T's centre of gravity in its body frame
WORKSPACE = (20.0, 492.0)  # inside the walls (at 5 and 506)


def rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def block_center(state: np.ndarray) -> np.ndarray:
    """World position of the T's centre of gravity from a gym-pusht state."""
    return state[2:4] + rot(state[4]) @ BLOCK_COG


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class _SteadyPointer:
    """Pointer that chases a waypoint with a smoothed velocity and a bounded step (px/step)."""

    def __init__(self, max_step: float, smoothing: float):
        self.max_step, self.smoothing = max_step, smoothing
        self.pos = self.vel = None

    def reset(self, start: np.ndarray) -> None:
        self.pos, self.vel = np.array(start, dtype=np.float64), np.zeros(2)

    def move_toward(self, waypoint: np.ndarray) -> np.ndarray:
        want = waypoint - self.pos
        n = np.linalg.norm(want)
        if n > self.max_step:
            want *= self.max_step / n
        self.vel = self.smoothing * self.vel + (1 - self.smoothing) * want
        self.pos = np.clip(self.pos + self.vel, 0.0, 512.0)
        return self.pos.copy()


class RandomSmoothPolicy:
    """Random smooth motion over the whole workspace; about half the waypoints are near the T,
    so the disc often touches and pushes it (the model learns contact dynamics from this)."""

    def __init__(self, max_step: float = 20.0, smoothing: float = 0.6, p_near_block: float = 0.5,
                 dwell: tuple[int, int] = (4, 16)):
        self.p_near_block, self.dwell = p_near_block, dwell
        self.pointer = _SteadyPointer(max_step, smoothing)
        self.rng = np.random.default_rng(0)
        self.waypoint, self.left = None, 0

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng([int(seed), 0x5EED])
        self.pointer.pos, self.waypoint, self.left = None, None, 0

    def act(self, obs: dict) -> np.ndarray:
        state = obs["state"]
        if self.pointer.pos is None:
            self.pointer.reset(state[:2])
        near = self.waypoint is not None and np.linalg.norm(self.waypoint - self.pointer.pos) < 5
        if self.waypoint is None or self.left <= 0 or near:
            if self.rng.random() < self.p_near_block:
                self.waypoint = block_center(state) + self.rng.normal(0.0, 45.0, 2)
            else:
                self.waypoint = self.rng.uniform(*WORKSPACE, 2)
            self.waypoint = np.clip(self.waypoint, *WORKSPACE)
            self.left = int(self.rng.integers(*self.dwell))
        self.left -= 1
        return self.pointer.move_toward(self.waypoint)


class GoalHeuristicPolicy:
    """Pushes the T roughly toward the goal: translate first (push from behind the centre,
    approaching around the T), then turn it (push a bar end sideways). No lookahead."""

    def __init__(self, max_step: float = 18.0, smoothing: float = 0.5, pos_tol: float = 12.0,
                 approach: float = 80.0, clearance: float = 95.0):
        self.pos_tol, self.approach, self.clearance = pos_tol, approach, clearance
        self.pointer = _SteadyPointer(max_step, smoothing)
        self.rng = np.random.default_rng(0)
        self.mode, self.push_left = "approach", 0

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng([int(seed), 0x60A1])
        self.pointer.pos, self.mode, self.push_left = None, "approach", 0

    def _contact(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where to put the disc and which way to push, for the current error."""
        c = block_center(state)
        goal_c = GOAL[:2] + rot(GOAL[2]) @ BLOCK_COG
        d = goal_c - c
        dist = np.linalg.norm(d)
        if dist > self.pos_tol:
            u = d / dist
            return c - u * self.approach, u
        # rotate: push a bar end perpendicular to the bar, toward the side that reduces the error
        err = wrap_angle(GOAL[2] - state[4])
        R = rot(state[4])
        side = 1.0 if err > 0 else -1.0
        end = np.array([55.0 * side, 15.0])  # a bar end, in the body frame
        push = R @ np.array([0.0, 1.0])  # +y of the body turns the +x end positively
        p = state[2:4] + R @ end
        return p - push * 35.0, push

    def act(self, obs: dict) -> np.ndarray:
        state = obs["state"]
        if self.pointer.pos is None:
            self.pointer.reset(state[:2])
        spot, push = self._contact(state)
        agent = state[:2]
        c = block_center(state)
        if self.mode == "push":
            self.push_left -= 1
            if self.push_left <= 0:
                self.mode = "approach"
            return self.pointer.move_toward(spot + push * 60.0)
        # approach: route around the T when the straight path crosses it
        to_spot = spot - agent
        n = np.linalg.norm(to_spot)
        if n < 12.0:
            self.mode, self.push_left = "push", int(self.rng.integers(6, 12))
            return self.pointer.move_toward(spot + push * 60.0)
        t = np.clip(np.dot(c - agent, to_spot) / max(n * n, 1e-9), 0.0, 1.0)
        closest = agent + t * to_spot
        if np.linalg.norm(closest - c) < self.clearance * 0.8 and np.linalg.norm(agent - c) > 30:
            away = agent - c
            perp = np.array([-to_spot[1], to_spot[0]]) / n
            perp = perp if np.dot(perp, away) >= 0 else -perp
            waypoint = c + perp * self.clearance
        else:
            waypoint = spot
        return self.pointer.move_toward(np.clip(waypoint, *WORKSPACE))


# name -> "module:attribute" of a policy class or factory; kwargs go to its constructor.
# dva.eval adds "dva" (the video policy) through the same table.
POLICIES = {
    "random": "dva.pusht.policies:RandomSmoothPolicy",
    "goal": "dva.pusht.policies:GoalHeuristicPolicy",
    "expert": "dva.pusht.expert:ExpertPolicy",
    "dva": "dva.policy:DVAPolicy",
}


def make_policy(name: str, **kwargs):
    """Build a registered policy by name (imports lazily, so workers can rebuild it by name)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    module, attr = POLICIES[name].split(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"policy {name!r} is registered as {POLICIES[name]} but cannot be loaded: {e}") from None
    return factory(**kwargs)
