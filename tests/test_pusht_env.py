"""Env wrapper and vector env over the real gym-pusht."""
import numpy as np
import pytest

from dva.pusht.env import SUBSTEPS, PushTEnv, hold_substeps_for
from dva.pusht.vector import VectorPushTEnv


def _rollout(env, seed, n=60, hold=0):
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed)
    out = [obs]
    for _ in range(n):
        obs, *_ = env.step(rng.uniform(0, 512, 2), hold)
        out.append(obs)
    return out


def _states(traj):
    return np.array([o["state"] for o in traj])


def test_obs_contract():
    obs, info = PushTEnv().reset(100000)
    assert obs["pixels"].shape == (96, 96, 3) and obs["pixels"].dtype == np.uint8
    assert obs["state"].shape == (5,) and obs["state"].dtype == np.float64
    assert obs["agent_vel"].shape == (2,) and 0 <= info["coverage"] <= 1


def test_state_only_step_is_the_gym_step():
    a, b = _rollout(PushTEnv(pixels=True), 7), _rollout(PushTEnv(pixels=False), 7)
    for x, y in zip(a, b):
        assert np.array_equal(x["state"], y["state"]) and np.array_equal(x["agent_vel"], y["agent_vel"])
    assert "pixels" not in b[0]


def test_held_substeps_track_the_previous_target():
    """A late action (hold_substeps): the physics tracks the previous step's target first."""
    e = PushTEnv(pixels=False)
    assert SUBSTEPS == int(1 / (e.gym_env.dt * e.gym_env.control_hz))  # gym-pusht's own count
    # holding all 10 substeps is executing every action one step late (the first step: rest)
    rng = np.random.default_rng(5)
    acts = rng.uniform(0, 512, (30, 2))
    e.reset(5)
    late = [e.step(a, SUBSTEPS)[0]["state"] for a in acts]
    e.reset(5)
    start = e.state[:2].copy()
    shifted = [e.step(a)[0]["state"] for a in [start, *acts[:-1]]]
    assert np.array_equal(np.array(late), np.array(shifted))
    # partial holds lie between: each differs from both ends, and more hold drifts further
    ref = _states(_rollout(PushTEnv(pixels=False), 9))
    err = [np.abs(_states(_rollout(PushTEnv(pixels=False), 9, hold=h))[:, :2] - ref[:, :2]).max(axis=1).mean()
           for h in (0, 1, 4, SUBSTEPS)]
    assert err[0] == 0 and 0 < err[1] < err[2] < err[3]
    # holding the very target it moves to is gym-pusht's own step, pixels included
    g, h = PushTEnv(pixels=True), PushTEnv(pixels=True)
    g.reset(2), h.reset(2)
    for act in acts[:15]:
        og, oh = g.step(act)[0], h.step(act, 3, held=act)[0]
        assert np.array_equal(og["state"], oh["state"]) and np.array_equal(og["pixels"], oh["pixels"])
    # the pixel env holds the same way (its own loop then, not gym-pusht's step)
    a, b = _rollout(PushTEnv(pixels=True), 9, n=20, hold=4), _rollout(PushTEnv(pixels=False), 9, n=20, hold=4)
    assert np.array_equal(_states(a), _states(b))
    # latency -> substeps: rounded up to the 10 ms substep, a whole step refused
    assert [hold_substeps_for(ms) for ms in (0, 0.5, 10, 10.1, 31, 99.9)] == [0, 1, 1, 2, 4, 10]
    with pytest.raises(ValueError, match="latency_ms"):
        hold_substeps_for(100)
    with pytest.raises(ValueError, match="hold_substeps"):
        e.step([1.0, 2.0], 11)


def test_reset_to_state_reproduces_state_and_pixels():
    traj = _rollout(PushTEnv(pixels=True), 3, n=40)
    env = PushTEnv(pixels=True)
    for o in traj[::7]:
        got, _ = env.reset_to_state(o["state"], o["agent_vel"])
        assert np.array_equal(got["state"], o["state"])
        assert np.array_equal(got["agent_vel"], o["agent_vel"])
        # identical frame except pymunk's contact markers (a few pixels at most)
        assert (got["pixels"] != o["pixels"]).any(-1).sum() <= 6
    # continuing from a restored state follows the original trajectory closely
    env.reset_to_state(traj[10]["state"], traj[10]["agent_vel"])
    rng = np.random.default_rng(3)
    acts = [rng.uniform(0, 512, 2) for _ in range(40)]
    obs, *_ = env.step(acts[10])
    assert np.abs(obs["state"][:2] - traj[11]["state"][:2]).max() < 1e-6  # the disc is exact


def test_gym_legacy_reset_order_differs():
    """Why reset_to_state sets the angle first: gym-pusht's own option lands elsewhere."""
    import gymnasium as gym
    import gym_pusht  # noqa: F401

    s = np.array([100.0, 100.0, 300.0, 300.0, 1.0])
    legacy, _ = gym.make("gym_pusht/PushT-v0").reset(options={"reset_to_state": s})
    ours, _ = PushTEnv(pixels=False).reset_to_state(s)
    assert np.allclose(ours["state"], s)
    assert not np.allclose(legacy[2:4], s[2:4], atol=1.0)


def test_bad_inputs():
    env = PushTEnv(pixels=False)
    env.reset(0)
    with pytest.raises(ValueError, match="action must be 2 finite floats"):
        env.step([1.0, np.nan])
    with pytest.raises(ValueError, match="state must be 5 finite floats"):
        env.reset_to_state([1, 2, 3])


def test_vector_env_matches_single_envs():
    seeds = [11, 12]
    singles = [PushTEnv(pixels=True) for _ in seeds]
    with VectorPushTEnv(2, pixels=True) as venv:
        vobs, _ = venv.reset(seeds)
        sobs = [e.reset(s)[0] for e, s in zip(singles, seeds)]
        rng = np.random.default_rng(0)
        for _ in range(15):
            acts = rng.uniform(0, 512, (2, 2))
            vobs, rew, term, _, infos = venv.step(acts)
            sobs = [e.step(a)[0] for e, a in zip(singles, acts)]
            assert vobs["pixels"].shape == (2, 96, 96, 3)
            for i in range(2):
                assert np.array_equal(vobs["state"][i], sobs[i]["state"])
                assert np.array_equal(vobs["pixels"][i], sobs[i]["pixels"])
        with pytest.raises(ValueError, match=r"actions must have shape \(2, 2\)"):
            venv.step(np.zeros((3, 2)))


def test_old_spaces_are_freed_across_resets():
    """gym-pusht leaves each episode's pymunk spaces (two per reset) in reference cycles; PushTEnv collects them
    every GC_EVERY resets, so the number alive stays bounded however many episodes run."""
    import gc

    import pymunk

    from dva.pusht.env import GC_EVERY

    env = PushTEnv(pixels=False)
    gc.collect()
    gc.disable()  # only PushTEnv's own collections may free them
    try:
        for seed in range(3 * GC_EVERY):
            env.reset(seed)
        # type(), not isinstance(): isinstance reads __class__, so it also counted the weakref
        # proxies to each space, and on torch's deprecated torch.distributed.reduce_op alias it
        # emitted a FutureWarning (gym-pusht and dva.pusht.sim make plain Spaces)
        alive = sum(type(o) is pymunk.Space for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive <= 2 * GC_EVERY + 2, f"{alive} pymunk spaces alive after {3 * GC_EVERY} resets"
