"""PushT environment layer over the real gym-pusht (0.1.8).

`PushTEnv` wraps gym-pusht's env class directly (no TimeLimit/OrderEnforcing wrappers: the
episode length is the protocol's business) and returns the project's observation dict:

    obs = {"pixels": uint8 (96, 96, 3), "state": float64 (5,), "agent_vel": float64 (2,)}

state = [agent x, agent y, block x, block y, block angle], exactly gym-pusht's `state` obs.
`reset_to_state` sets the block's angle before its position (DESIGN.md section 3): the block's
centre of gravity is offset, so gym-pusht's own legacy order lands on a different state.
"""
from __future__ import annotations

import gc
import math
import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import os

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from gym_pusht.envs.pusht import PushTEnv as _GymPushT

SUCCESS_COVERAGE = 0.95  # gym-pusht's success_threshold
CONTROL_HZ = 10
# gym-pusht builds a new pymunk space on every reset; the old one (space, bodies, shapes, cffi
# handles) is a reference cycle that only a full collection frees, and with a large heap Python
# runs one rarely: measured +0.4 MiB RSS per episode over 100 episodes (docs/control.md). A full
# collection every GC_EVERY resets (~60 ms each on the 2-core CPU) keeps long runs flat.
GC_EVERY = 16
SUBSTEPS = 10  # gym-pusht's physics substeps per control step (dt 0.01 s at 10 Hz)


def hold_substeps_for(latency_ms: float) -> int:
    """Physics substeps (10 ms each) a target computed from the step's first frame arrives too
    late for: a controller with this inference latency holds the previous target that long.
    A latency of a whole step or more is the policy's business (leapfrog's delay), not this."""
    if not 0 <= latency_ms < 1000 / CONTROL_HZ:
        raise ValueError(f"latency_ms must be in [0, {1000 / CONTROL_HZ:.0f}) ms, got {latency_ms}")
    return math.ceil(latency_ms * SUBSTEPS * CONTROL_HZ / 1000 - 1e-9)


def gym_pusht_version() -> str:
    from importlib.metadata import version

    return version("gym-pusht")


class PushTEnv:
    """One gym-pusht PushT env with the project's obs dict and privileged access.

    pixels=False skips pygame rendering (about 10x faster steps) and leaves "pixels" out of obs;
    privileged policies and state-only collection do not need it.
    """

    def __init__(self, pixels: bool = True, size: int = 96):
        self.pixels = pixels
        self._env = _GymPushT(obs_type="pixels_agent_pos", render_mode="rgb_array",
                              observation_width=size, observation_height=size)
        self._env.reset(seed=0)  # builds the space; reset() rebuilds it anyway
        self._resets = 0
        self._target = np.array(self._env.agent.position, dtype=np.float64)  # last step's target

    # ---------------------------------------------------------------- privileged access
    @property
    def gym_env(self) -> _GymPushT:
        """The underlying gym-pusht env (its pymunk space, agent and block bodies)."""
        return self._env

    @property
    def state(self) -> np.ndarray:
        e = self._env
        return np.array([*e.agent.position, *e.block.position, e.block.angle % (2 * np.pi)],
                        dtype=np.float64)

    @property
    def agent_vel(self) -> np.ndarray:
        return np.array(self._env.agent.velocity, dtype=np.float64)

    def coverage(self) -> float:
        return float(self._env._get_coverage())

    def obs(self) -> dict:
        out = {"state": self.state, "agent_vel": self.agent_vel}
        if self.pixels:
            out["pixels"] = self._env._render()
        return out

    # ---------------------------------------------------------------- episode control
    def reset(self, seed: int) -> tuple[dict, dict]:
        """gym-pusht's seeded random start (its own RNG, so seeds match the protocol's)."""
        self._rebuild(int(seed))
        self._target = np.array(self._env.agent.position, dtype=np.float64)  # the pointer rests on the disc
        return self.obs(), self._info()

    def reset_to_state(self, state, agent_vel=None) -> tuple[dict, dict]:
        """Put the env exactly into `state` (5,), optionally with the disc's velocity (2,)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (5,) or not np.isfinite(state).all():
            raise ValueError(f"reset_to_state: state must be 5 finite floats, got {state!r}")
        e = self._env
        self._rebuild(0)  # fresh space (clears cached contacts and velocities)
        e.agent.position = state[:2].tolist()
        e.block.angle = float(state[4])  # angle first: the block's CoG is offset (0, 45)
        e.block.position = state[2:4].tolist()
        e.agent.velocity = (0.0, 0.0)
        e.block.velocity = (0.0, 0.0)
        e.block.angular_velocity = 0.0
        e.space.step(e.dt)  # like gym-pusht's _set_state: zero velocities, so nothing moves
        if agent_vel is not None:
            v = np.asarray(agent_vel, dtype=np.float64)
            if v.shape != (2,) or not np.isfinite(v).all():
                raise ValueError(f"reset_to_state: agent_vel must be 2 finite floats, got {v!r}")
            e.agent.velocity = v.tolist()
        self._target = state[:2].copy()
        return self.obs(), self._info()

    def _rebuild(self, seed: int) -> None:
        self._resets += 1
        if self._resets % GC_EVERY == 0:
            gc.collect()  # frees the spaces of earlier episodes (see GC_EVERY)
        self._env.reset(seed=seed)

    def step(self, action, hold_substeps: int = 0, held=None) -> tuple[dict, float, bool, bool, dict]:
        """One 0.1 s control step toward pointer target `action` (2,) in [0, 512] pixels.

        hold_substeps: the first this many of the step's SUBSTEPS physics substeps (10 ms each)
        still track target `held` (default: the previous step's target; at the start of an
        episode the disc's own position), the rest `action`: a controller whose new target lands
        that late after the frame it was computed from (its inference latency,
        `hold_substeps_for`). 0 is gym-pusht's own step. Returns (obs, reward, terminated,
        truncated, info); info has "coverage" and "is_success". terminated is gym-pusht's
        (coverage > 0.95); truncation is left to the caller.
        """
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,) or not np.isfinite(a).all():
            raise ValueError(f"step: action must be 2 finite floats, got {action!r}")
        if not 0 <= hold_substeps <= SUBSTEPS:
            raise ValueError(f"step: hold_substeps must be in 0..{SUBSTEPS}, got {hold_substeps}")
        e = self._env
        if held is None:
            held = self._target  # checked when it was the action
        else:
            held = np.asarray(held, dtype=np.float64)
            if held.shape != (2,) or not np.isfinite(held).all():
                raise ValueError(f"step: held must be 2 finite floats, got {held!r}")
        self._target = a.copy()
        if self.pixels and hold_substeps == 0:  # the real gym-pusht step (it renders the pixels obs)
            g_obs, reward, terminated, _, g_info = e.step(a)
            info = {"coverage": float(g_info["coverage"]), "is_success": bool(g_info["is_success"])}
            obs = {"state": self.state, "agent_vel": self.agent_vel, "pixels": g_obs["pixels"]}
            return obs, float(reward), bool(terminated), False, info
        # gym-pusht's physics loop (same float operations: tests check the trajectories are
        # identical), without its render unless pixels are wanted, in two parts when held
        e.n_contact_points = 0
        e._last_action = a
        for target, n in ((held, hold_substeps), (a, SUBSTEPS - hold_substeps)):
            for _ in range(n):
                acc = e.k_p * (target - np.asarray(e.agent.position)) + e.k_v * (0.0 - np.asarray(e.agent.velocity))
                e.agent.velocity += acc * e.dt
                e.space.step(e.dt)
        info = self._info()
        reward = float(np.clip(info["coverage"] / SUCCESS_COVERAGE, 0.0, 1.0))
        return self.obs(), reward, bool(info["is_success"]), False, info

    def _info(self) -> dict:
        cov = self.coverage()
        return {"coverage": cov, "is_success": cov > SUCCESS_COVERAGE}

    def close(self) -> None:
        self._env.close()
