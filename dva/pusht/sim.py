"""Headless re-creation of gym-pusht's physics, rebuilt from a state (owned by the expert).

gym-pusht's env cannot be copied (``space.copy()``/deepcopy fail: its collision handler is bound
to the env object), so a planner that wants lookahead rebuilds the pymunk space from the
privileged state instead. Everything here copies ``gym_pusht/envs/pusht.py`` (gym-pusht 0.1.8):
``_setup`` (walls, zero gravity, zero damping), ``add_circle`` (kinematic agent, r=15),
``add_tee`` (two-box T, centre of gravity (0, 45) in the block frame), and the PD control of
``step`` (k_p=100, k_v=20, dt=0.01, 10 substeps per 0.1 s action).

Differences from the env, on purpose:
- the block is put into a state angle first, then position (the env's legacy order moves the
  block, see DESIGN.md section 3), so a rebuilt sim starts exactly at the observed state;
- no extra ``space.step`` after setting the state (the env does one at reset; a state read from a
  running env is already post-step) and no collision handler (it only counts contacts);
- pymunk's cached contacts are not part of the state, so a rebuilt sim is close to, not bit-exact
  with, the env it was copied from: plan short horizons and replan.
"""

from __future__ import annotations

import numpy as np
import pymunk

K_P, K_V = 100.0, 20.0  # PD gains of gym-pusht's step()
DT = 0.01  # physics substep, s
SUBSTEPS = 10  # substeps per 0.1 s action (gym-pusht: int(1 / (dt * control_hz)))
AGENT_RADIUS = 15.0
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])  # block x, y, angle of the green target

# The T's outline in the block frame (body origin, not the centre of gravity), counter-clockwise
# in pymunk's y-up convention; these are the corners of gym-pusht's two boxes (scale 30, length 4).
T_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]],
    dtype=np.float64,
)
_BAR = [(-60.0, 30.0), (60.0, 30.0), (60.0, 0.0), (-60.0, 0.0)]
_STEM = [(-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0)]


class Sim:
    """A pymunk space with gym-pusht's agent, T block and walls, put into a given state."""

    def __init__(self, state, agent_vel=(0.0, 0.0)):
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (5,):
            raise ValueError(f"Sim: state must have shape (5,), got {state.shape}")
        self.space = pymunk.Space()
        self.space.gravity = 0, 0
        self.space.damping = 0.0
        walls = [
            pymunk.Segment(self.space.static_body, a, b, 2)
            for a, b in [((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506))]
        ]
        self.space.add(*walls)

        self.agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        self.agent.friction = 1  # as in gym-pusht: set on the body, so shapes stay frictionless
        self.space.add(self.agent, pymunk.Circle(self.agent, AGENT_RADIUS))

        mass = 1
        inertia = 2 * pymunk.moment_for_poly(mass, vertices=_BAR)  # gym-pusht uses vertices1 twice
        self.block = pymunk.Body(mass, inertia)
        bar, stem = pymunk.Poly(self.block, _BAR), pymunk.Poly(self.block, _STEM)
        self.block.center_of_gravity = (bar.center_of_gravity + stem.center_of_gravity) / 2
        self.block.friction = 1
        self.space.add(self.block, bar, stem)
        self.set_state(state, agent_vel)

    def set_state(self, state, agent_vel=(0.0, 0.0)) -> None:
        self.agent.position = (float(state[0]), float(state[1]))
        self.agent.velocity = (float(agent_vel[0]), float(agent_vel[1]))
        # Angle first, then position: pymunk rotates about the centre of gravity.
        self.block.angle = float(state[4])
        self.block.position = (float(state[2]), float(state[3]))
        self.block.velocity = (0.0, 0.0)
        self.block.angular_velocity = 0.0

    def state(self) -> np.ndarray:
        """(5,) float64 in gym-pusht's `state` layout (angle wrapped to [0, 2pi) like the env)."""
        a, b = self.agent.position, self.block.position
        return np.array([a.x, a.y, b.x, b.y, self.block.angle % (2 * np.pi)])

    def block_pose(self) -> np.ndarray:
        b = self.block.position
        return np.array([b.x, b.y, self.block.angle])

    def step(self, action) -> None:
        """One 0.1 s action: gym-pusht's PD control and 10 physics substeps."""
        ax, ay = float(action[0]), float(action[1])
        for _ in range(SUBSTEPS):
            p, v = self.agent.position, self.agent.velocity
            # Same float64 arithmetic and order as gym-pusht's step().
            self.agent.velocity = (
                v.x + (K_P * (ax - p.x) + K_V * (0.0 - v.x)) * DT,
                v.y + (K_P * (ay - p.y) + K_V * (0.0 - v.y)) * DT,
            )
            self.space.step(DT)

    def step_velocities(self, velocities: np.ndarray, record_every: int = 1) -> np.ndarray:
        """Run substeps with precomputed agent velocities (N, 2); returns block poses (N // k, 3).

        The agent is kinematic (collisions never change its motion), so its trajectory under PD
        control can be integrated without the block (see `pd_rollout`); only the block needs pymunk.
        """
        out = []
        blk = self.block
        for i, (vx, vy) in enumerate(velocities):
            self.agent.velocity = (vx, vy)
            self.space.step(DT)
            if (i + 1) % record_every == 0:
                p = blk.position
                out.append((p.x, p.y, blk.angle))
        return np.asarray(out, dtype=np.float64).reshape(-1, 3)


def pd_rollout(pos, vel, targets) -> tuple[np.ndarray, np.ndarray]:
    """Integrate gym-pusht's PD-controlled kinematic agent for a sequence of pointer targets.

    pos, vel: (2,); targets: (T, 2) one pointer target per 0.1 s action.
    Returns (positions, velocities), each (T * SUBSTEPS, 2): the state after every substep, with
    the velocity being the one pymunk integrates the position with (p += v * dt).
    """
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 2)
    p = np.array(pos, dtype=np.float64)
    v = np.array(vel, dtype=np.float64)
    n = len(targets) * SUBSTEPS
    ps, vs = np.empty((n, 2)), np.empty((n, 2))
    for i in range(n):
        a = targets[i // SUBSTEPS]
        v = v + (K_P * (a - p) + K_V * (0.0 - v)) * DT
        p = p + v * DT
        ps[i], vs[i] = p, v
    return ps, vs


def outline_world(pose) -> np.ndarray:
    """(8, 2) world coordinates of the T's outline corners for block pose(s) (x, y, angle).

    pose may be (3,) or (N, 3); returns (8, 2) or (N, 8, 2).
    """
    pose = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (..., 2, 2)
    return np.einsum("...ij,kj->...ki", rot, T_OUTLINE) + pose[..., None, :2]


GOAL_OUTLINE = outline_world(GOAL_POSE)


def vertex_error(pose) -> np.ndarray:
    """Mean distance (px) of the T's outline corners to the goal's; pose (3,) or (N, 3)."""
    return np.linalg.norm(outline_world(pose) - GOAL_OUTLINE, axis=-1).mean(-1)
