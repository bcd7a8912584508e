"""PushT layer: gym-pusht env wrapper, vector env, renderer, data policies, evaluation protocol.

`render_frames` is imported eagerly (torch only); the env pieces import gym-pusht/pygame on
first use so that training processes that only render do not load them.
"""
from .render import render_frames

__all__ = ["render_frames", "PushTEnv", "gym_pusht_version"]


def __getattr__(name):
    if name in ("PushTEnv", "gym_pusht_version"):
        from . import env

        return getattr(env, name)
    raise AttributeError(f"module 'dva.pusht' has no attribute {name!r}")
