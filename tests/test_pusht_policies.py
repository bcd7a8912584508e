"""Data policies: steady-hand pointer, determinism, and that they do what they are for."""
import numpy as np
import pytest

from dva.pusht.env import PushTEnv
from dva.pusht.policies import POLICIES, GoalHeuristicPolicy, RandomSmoothPolicy, make_policy
from dva.pusht.protocol import run_episode


@pytest.mark.parametrize("cls", [RandomSmoothPolicy, GoalHeuristicPolicy])
def test_steady_hand_and_deterministic(cls):
    env = PushTEnv(pixels=False)
    _, a = run_episode(cls(), 5, env, 120, record=True)
    _, b = run_episode(cls(), 5, env, 120, record=True)
    acts = np.stack(a["actions"])
    assert np.array_equal(acts, np.stack(b["actions"]))  # same seed, same actions
    steps = np.linalg.norm(np.diff(acts, axis=0), axis=1)
    assert steps.max() <= 20.0 + 1e-9  # bounded pointer step, no teleporting
    assert ((acts >= 0) & (acts <= 512)).all()


def test_random_policy_touches_the_block():
    env = PushTEnv(pixels=False)
    _, tr = run_episode(RandomSmoothPolicy(), 3, env, 300, record=True)
    s = np.stack(tr["states"])
    moved = (np.abs(np.diff(s[:, 2:], axis=0)).max(1) > 1e-3).mean()
    assert moved > 0.1, f"the block moved in only {moved:.0%} of steps"


def test_goal_heuristic_pushes_toward_goal():
    env = PushTEnv(pixels=False)
    for seed in (100000, 100001, 100002):
        res, tr = run_episode(GoalHeuristicPolicy(), seed, env, 300, record=True)
        assert res.max_coverage > max(tr["coverage"][0] + 0.2, 0.6), (seed, tr["coverage"][0], res.max_coverage)


def test_registry():
    assert {"random", "goal", "expert", "dva"} <= POLICIES.keys()
    assert isinstance(make_policy("random"), RandomSmoothPolicy)
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")
