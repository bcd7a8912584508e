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


# T keypoints in the body frame: the two bar ends and the stem's end (on the T's axes).
KEYPOINTS = np.array([(-60.0, 15.0), (60.0, 15.0), (0.0, 120.0)])


def _inside_t(p: np.ndarray, margin: float) -> bool:
    """Is body-frame point p within `margin` of the T (bar [-60,60]x[0,30], stem [-15,15]x[30,120])?"""
    x, y = p
    return bool((-60 - margin <= x <= 60 + margin and -margin <= y <= 30 + margin)
                or (-15 - margin <= x <= 15 + margin and 30 - margin <= y <= 120 + margin))


class GoalHeuristicPolicy:
    """Pushes the T roughly toward the goal, without lookahead: find the keypoint (bar ends,
    stem end) farthest from its goal position, put the disc against the T behind it (on the
    line through the keypoint along its error), push a short way along the error, repeat.
    Pushing a point of a body toward its target moves and turns the body at once. The approach
    goes around the T when the straight path would cross it."""

    def __init__(self, max_step: float = 18.0, smoothing: float = 0.5, push_len: float = 30.0,
                 push_steps_per_px: float = 0.15, max_push_steps: int = 8, clearance: float = 95.0,
                 disc_margin: float = 17.0):
        self.push_len, self.push_steps_per_px, self.max_push_steps = push_len, push_steps_per_px, max_push_steps
        self.clearance, self.disc_margin = clearance, disc_margin
        self.pointer = _SteadyPointer(max_step, smoothing)
        self.mode, self.push_left, self.push_target = "approach", 0, None

    def reset(self, seed: int) -> None:
        # deterministic: no randomness needed (the seed fixes the env's start)
        self.pointer.pos, self.mode, self.push_left, self.push_target = None, "approach", 0, None

    def _contact(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(disc spot, push direction, push length) for the worst keypoint."""
        R, Rg = rot(state[4]), rot(GOAL[2])
        p = state[2:4] + KEYPOINTS @ R.T  # (3, 2) world keypoints
        err = GOAL[:2] + KEYPOINTS @ Rg.T - p
        n = np.linalg.norm(err, axis=1)
        k = int(np.argmax(n))
        u = err[k] / max(n[k], 1e-9)
        u_body = R.T @ u
        d = 0.0  # walk back from the keypoint until the disc (radius 15) clears the T
        while d < 200 and _inside_t(KEYPOINTS[k] - u_body * d, self.disc_margin):
            d += 2.0
        return p[k] - u * d, u, min(n[k] + 10.0, self.push_len)

    def act(self, obs: dict) -> np.ndarray:
        state = obs["state"]
        if self.pointer.pos is None:
            self.pointer.reset(state[:2])
        if self.mode == "push":
            self.push_left -= 1
            if self.push_left <= 0:
                self.mode = "approach"
            return self.pointer.move_toward(self.push_target)
        spot, push, length = self._contact(state)
        agent, c = state[:2], block_center(state)
        to_spot = spot - agent
        n = np.linalg.norm(to_spot)
        if n < 10.0:  # in place: push (pointer leads the disc, so aim past the contact)
            self.mode = "push"
            self.push_left = int(np.clip(length * self.push_steps_per_px, 2, self.max_push_steps))
            self.push_target = spot + push * (length + 15.0)
            return self.pointer.move_toward(self.push_target)
        t = np.clip(np.dot(c - agent, to_spot) / max(n * n, 1e-9), 0.0, 1.0)
        if np.linalg.norm(agent + t * to_spot - c) < self.clearance * 0.8 and np.linalg.norm(agent - c) > 30:
            perp = np.array([-to_spot[1], to_spot[0]]) / n  # go around, on the agent's side
            perp = perp if np.dot(perp, agent - c) >= 0 else -perp
            waypoint = c + perp * self.clearance
        else:
            waypoint = spot
        return self.pointer.move_toward(np.clip(waypoint, *WORKSPACE))


# name -> "module:attribute" of a policy class or factory; kwargs go to its constructor.
# "dva" is the video policy, "bc" its pixel behaviour-cloning peer (both need --checkpoint).
POLICIES = {
    "random": "dva.pusht.policies:RandomSmoothPolicy",
    "goal": "dva.pusht.policies:GoalHeuristicPolicy",
    "expert": "dva.pusht.expert:ExpertPolicy",
    "dva": "dva.policy:DVAPolicy",
    "bc": "dva.bc:BCPolicy",
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
