"""N PushT environments stepped in lockstep, each in its own worker process.

For batched policies (one model call for N observations): obs come back stacked,
{"pixels": (N, 96, 96, 3) uint8, "state": (N, 5), "agent_vel": (N, 2)}. No auto-reset: the
caller decides what a finished env does next (the protocol stops it, collection resets it).
"""
from __future__ import annotations

import multiprocessing as mp

import numpy as np


def _worker(conn, pixels: bool) -> None:
    from dva.pusht.env import PushTEnv

    env = PushTEnv(pixels=pixels)
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                conn.send(env.reset(arg))
            elif cmd == "reset_to_state":
                conn.send(env.reset_to_state(*arg))
            elif cmd == "step":
                conn.send(env.step(arg))
            elif cmd == "close":
                break
            else:
                conn.send(ValueError(f"unknown command {cmd!r}"))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        env.close()
        conn.close()


def _stack(obs_list: list[dict]) -> dict:
    return {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}


class VectorPushTEnv:
    def __init__(self, n: int, pixels: bool = True, context: str = "spawn"):
        if n < 1:
            raise ValueError(f"VectorPushTEnv: n must be >= 1, got {n}")
        ctx = mp.get_context(context)
        self.n = n
        self._conns, self._procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, pixels), daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)

    def _call(self, cmd: str, args) -> list:
        for c, a in zip(self._conns, args):
            c.send((cmd, a))
        out = [c.recv() for c in self._conns]
        for r in out:
            if isinstance(r, Exception):
                raise r
        return out

    def reset(self, seeds) -> tuple[dict, list[dict]]:
        seeds = [int(s) for s in seeds]
        if len(seeds) != self.n:
            raise ValueError(f"reset: need {self.n} seeds, got {len(seeds)}")
        res = self._call("reset", seeds)
        return _stack([r[0] for r in res]), [r[1] for r in res]

    def reset_to_state(self, states, agent_vels=None) -> tuple[dict, list[dict]]:
        states = np.asarray(states, dtype=np.float64).reshape(self.n, 5)
        vels = [None] * self.n if agent_vels is None else np.asarray(agent_vels, np.float64).reshape(self.n, 2)
        res = self._call("reset_to_state", [(s, v) for s, v in zip(states, vels)])
        return _stack([r[0] for r in res]), [r[1] for r in res]

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.n, 2):
            raise ValueError(f"step: actions must have shape ({self.n}, 2), got {actions.shape}")
        res = self._call("step", list(actions))
        obs = _stack([r[0] for r in res])
        reward = np.array([r[1] for r in res])
        terminated = np.array([r[2] for r in res])
        truncated = np.array([r[3] for r in res])
        return obs, reward, terminated, truncated, [r[4] for r in res]

    def close(self) -> None:
        for c in self._conns:
            try:
                c.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        self._conns, self._procs = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_procs", None):
            self.close()
