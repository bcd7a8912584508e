"""Leapfrog scheduler (dva.leapfrog): pure step bookkeeping, no model, no clock."""
import math

import numpy as np
import pytest

from dva.leapfrog import Leapfrog, LeapfrogConfig, Plan, RingStats


def ramp_plan(start, h, committed=0, base=None):
    """Actions that move 2 px per step along x from `start` (so plans that agree join exactly)."""
    steps = np.arange(start, start + h)
    acts = np.stack([100.0 + 2.0 * steps, np.full(h, 200.0)], axis=1)
    if base is not None:
        acts[:committed] = base
    return Plan(start=start, actions=acts, committed=committed)


def simulate(leap: Leapfrog, per_frame_s: float, n_steps: int):
    """Real time in simulated time, as dva.loop runs it: frame t arrives at t * dt; inference costs
    `per_frame_s` per predicted frame, launches on the newest frame as soon as it is free (and a
    new frame has arrived), and submits each action as it is read; an action read at time x acts
    from the first step it lands in before that step's `land_by` (take() waits that long). The
    first plan is ready at step 0 (made before the clock starts). Returns executed actions, the
    miss flags and the horizons planned."""
    c = leap.cfg
    leap.record_latency(c.h_init * per_frame_s, c.h_init)  # the untimed warm-up plan
    leap.submit(ramp_plan(0, leap.horizon()), 0)
    free, last, executed, misses, horizons = 0.0, 0, [], [], []
    for k in range(n_steps):
        while True:  # every plan launched before step k's action is taken
            t = max(math.floor(free / c.dt + 1e-9), last + 1)  # the frame it plans from
            launch = max(free, t * c.dt)
            if launch >= (k + c.land_by) * c.dt:
                break
            h = leap.horizon(launch - t * c.dt)
            n = min(leap.landing_steps(h, launch - t * c.dt), h)
            plan = ramp_plan(t, h, n, leap.committed(t, n))
            for j in range(n, h):  # the plan so far, as each of its actions is read
                read = launch + (j + 1) * per_frame_s
                leap.submit(Plan(t, plan.actions[:j + 1], committed=n), math.ceil(read / c.dt - c.land_by - 1e-9))
            leap.record_latency(h * per_frame_s, h)
            free, last = launch + h * per_frame_s, t
            horizons.append(h)
        a, miss = leap.action(k)
        executed.append(a)
        misses.append(miss)
    return np.array(executed), np.array(misses), horizons


@pytest.mark.parametrize("margin", [0, 1])
@pytest.mark.parametrize("per_frame_ms", [5, 30, 45, 60, 80])
def test_horizon_covers_latency_never_starves(per_frame_ms, margin):
    cfg = LeapfrogConfig(margin=margin, h_max=32)
    leap = Leapfrog(cfg)
    acts, misses, horizons = simulate(leap, per_frame_ms / 1e3, 80)
    assert not misses.any(), f"starved at steps {np.flatnonzero(misses)} (horizons {horizons})"
    # plans stay short: with each action submitted as read, a plan need only last until the
    # next one's actions land (2 frames up to 45 ms per frame, 5-10 at 80 ms); the rule before
    # asked 2 * its own delay + margin: with margin 1, 5 frames at 30 ms and ~30 at 45 ms
    assert np.median(horizons) == 2 if per_frame_ms <= 45 else max(horizons) <= 5 + 5 * margin, horizons
    # plans agree on the ramp, so the executed targets are the ramp exactly: no jumps
    np.testing.assert_allclose(acts[:, 0], 100.0 + 2.0 * np.arange(80))
    s = leap.stats()
    assert s["action_jump_px"]["max"] == pytest.approx(2.0)
    assert s["deadline_misses"] == 0 and s["plans"] >= len(horizons) - 1  # (the last may not start)


def test_starved_controller_holds_last_target_and_counts_misses():
    leap = Leapfrog()
    leap.submit(ramp_plan(0, 3), 0)
    got = [leap.action(k) for k in range(6)]
    acts = np.array([a for a, _ in got])
    misses = [m for _, m in got]
    assert misses == [False, False, False, True, True, True]
    np.testing.assert_array_equal(acts[3:], np.repeat(acts[2:3], 3, axis=0))  # held
    assert leap.stats()["deadline_misses"] == 3
    # a plan that arrives after its own last step is dropped, not executed
    leap.submit(ramp_plan(1, 2), None)
    a, miss = leap.action(6)
    assert miss and leap.stats()["stale_plans"] == 1
    np.testing.assert_array_equal(a, acts[2])


def test_committed_reports_what_will_run():
    leap = Leapfrog()
    leap.submit(ramp_plan(0, 4), 0)
    for k in range(2):
        leap.action(k)
    c = leap.committed(1, 5)  # step 1 executed, 2-3 from the active plan, 4-5 held
    np.testing.assert_array_equal(c[:, 0], [102.0, 104.0, 106.0, 106.0, 106.0])
    # a submitted but not yet active plan is what will run from its take-over step on
    later = Plan(start=2, actions=np.full((4, 2), 7.0))
    leap.submit(later, 3)
    np.testing.assert_array_equal(leap.committed(2, 3)[:, 0], [104.0, 7.0, 7.0])


def test_jump_measured_at_boundaries():
    leap = Leapfrog()
    leap.submit(ramp_plan(0, 3), 0)
    leap.action(0)
    leap.action(1)
    other = Plan(start=1, actions=np.array([[102.0, 200.0], [150.0, 200.0], [150.0, 200.0]]))
    leap.submit(other, 2)
    a, miss = leap.action(2)
    assert not miss and a[0] == 150.0
    s = leap.stats()
    assert s["action_jump_px"]["n"] == 1 and s["action_jump_px"]["max"] == pytest.approx(48.0)
    assert s["action_delta_px"]["max"] == pytest.approx(2.0)


def test_horizon_grows_with_latency_and_saturates():
    cfg = LeapfrogConfig(margin=2, h_max=10)
    leap = Leapfrog(cfg)
    assert leap.horizon() == cfg.h_init  # nothing measured yet
    for _ in range(4):
        leap.record_latency(0.03, 4)  # fast: every plan lands within one step
    assert leap.horizon() == 3  # the next plan (from frame t+1) lands in step t+1: 2 steps of margin
    for _ in range(cfg.window):
        leap.record_latency(0.24, 4)  # 60 ms per frame: each frame of this plan delays the next
    # one by 0.06 s and buys 0.04 s of slack: 7 frames until it lands 2 steps before this one ends
    assert leap.horizon() == 7
    for _ in range(cfg.window):
        leap.record_latency(0.7, 4)  # 175 ms per frame: no plan outlives its own latency
    assert leap.horizon() == cfg.h_max


def test_ring_stats_bounded_and_exact_within_capacity():
    r = RingStats(capacity=100)
    for x in range(50):
        r.add(float(x))
    assert r.quantile(0.5) == pytest.approx(24.5) and r.max == 49 and r.count == 50
    for x in range(1000):
        r.add(1.0)
    assert len(r.values()) == 100 and r.quantile(0.99) == 1.0 and r.count == 1050


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="h_min <= h_init <= h_max"):
        LeapfrogConfig(h_min=5, h_init=4)
    leap = Leapfrog()
    with pytest.raises(RuntimeError, match="no plan"):
        leap.action(0)


def test_fixed_latency_part_does_not_scale_with_horizon():
    cfg = LeapfrogConfig(margin=0, h_max=32)
    a, b = Leapfrog(cfg), Leapfrog(cfg)
    a.record_latency(0.4, 4)  # all of it dreaming: 100 ms per frame
    b.record_latency(0.4, 4, fixed_s=0.36)  # mostly observing real frames: 10 ms per frame
    assert a.delay_steps(8) == 8  # 0.8 s
    assert b.delay_steps(8) == 5  # 0.36 + 0.08 = 0.44 s
    # whole steps before landing (real time takes over within the next): rounded down
    assert a.landing_steps(8) == 8 and b.landing_steps(8) == 4
    fast = Leapfrog(cfg)
    assert fast.landing_steps(2) == 1  # nothing measured yet: assume a step
    fast.record_latency(0.03, 1)
    assert fast.landing_steps(2) == 0 and fast.delay_steps(2) == 1  # lands within the step


def test_a_frame_waiting_for_the_previous_plan_does_not_lengthen_the_horizon():
    # 2-frame plans of 64 ms (10 of it observing) keep up with h = 2 ...
    cfg = LeapfrogConfig(margin=0)
    leap = Leapfrog(cfg)
    for _ in range(cfg.window):
        leap.record_latency(0.064, 2, fixed_s=0.010)
    assert leap.horizon() == 2 and leap.landing_steps(2) == 0
    # ... and still do when their frames had waited 250 ms for a long plan to finish: that wait is
    # the previous plan's length (counted as plan cost, it made the next plan long: a lock-in)
    for _ in range(cfg.window):
        leap.record_latency(0.064, 2, fixed_s=0.010, waited_s=0.25)
    assert leap.horizon() == 2
    assert leap.stats()["latency_ms"]["max"] == pytest.approx(314.0)  # reported from the frame
    # the wait a plan's own frame has had is known at launch: the steps it cannot reach are
    # committed (its 4th action lands at 0.25 + 0.118 s, in step 3), and that plan is longer...
    assert leap.landing_steps(4, waited_s=0.25) == 3 and leap.landing_steps(2, waited_s=0.25) == 2
    assert leap.horizon(0.25) == 4
    # ...but the next, launched on the newest frame as soon as it is done (0.068 s after it), is not
    assert leap.horizon(0.068) == 2
    # nor do the frames that piled up meanwhile: a plan that observed 6 of them (60 ms) is charged one
    for _ in range(cfg.window):
        leap.record_latency(0.114, 2, fixed_s=0.060, waited_s=0.25, observed=6)
    assert leap.horizon() == 2 and leap.delay_steps(2) == 1  # 0.01 + 0.054 s
    for _ in range(cfg.window):
        leap.record_latency(0.114, 2, fixed_s=0.060)  # one frame that takes 60 ms to observe is slow
    # 0.114 s: the first action would land 87 ms into its step, past land_by (70 ms): the plan
    # commits to it and lands its second in time, as the next one does
    assert leap.delay_steps(2) == 2 and leap.landing_steps(2) == 1 and leap.horizon() == 2


def test_executed_into_is_the_action_of_the_step_before():
    leap = Leapfrog(LeapfrogConfig(h_init=4, h_min=1, h_max=8))
    leap.submit(ramp_plan(0, 4))
    assert leap.executed_into(0) is None and leap.executed_into(1) is None  # nothing executed yet
    a0, _ = leap.action(0)
    a1, _ = leap.action(1)
    assert np.array_equal(leap.executed_into(1), a0) and np.array_equal(leap.executed_into(2), a1)
    assert leap.executed_into(3) is None  # step 2 has not run
