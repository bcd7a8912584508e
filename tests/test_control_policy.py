"""DVAPlanner / DVAPolicy with the real `tiny` model (random weights): cache discipline,
committed actions, determinism. No env here (see test_control_episode.py)."""
import numpy as np
import pytest
import torch

from dva.model.config import preset
from dva.model.dva import DVA
from dva.model.idm import IDM
from dva.policy import DVAPlanner, DVAPolicy, LockstepConfig, PlannerConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the CLI does (dva.control --threads 1): 2 threads on the shared 2-core CPU are slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def generic(seed=0, **cfg):
    """A `tiny` model and IDM (preset overrides `cfg`). The model zero-initialises its output layers
    (every block starts as the identity), which would make an untrained dream ignore its inputs;
    those weights get small random values so the tests see a generic function of frames and
    actions, as after training."""
    torch.manual_seed(seed)
    c = preset("tiny", **cfg)
    model, idm = DVA(c).eval(), IDM(c).eval()
    with torch.no_grad():
        for p in list(model.parameters()) + list(idm.parameters()):
            if not p.any():
                p.normal_(0.0, 0.05)
    return model, idm


@pytest.fixture(scope="module")
def tiny():
    return generic()


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def snapshot(cache):
    return [t.clone() for t in cache.k + cache.v + [cache.slot_pos, cache.pos]]


@pytest.mark.parametrize("horizon", [1, 3, 7])  # 7: six scratch frames wrap the W=4 ring
def test_plan_rolls_back_cache_bitwise(tiny, horizon):
    planner = DVAPlanner(*tiny)
    planner.reset(0)
    for f in frames(6):  # past the window: the ring has wrapped before planning
        planner.observe(f)
    before = snapshot(planner.cache)
    plan = planner.plan(5, np.array([[300.0, 200.0]]), horizon)
    after = snapshot(planner.cache)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert torch.equal(b, a), "predicted frames leaked into the cache"
    assert plan.frames.shape == (horizon, 96, 96, 3) and plan.frames.dtype == np.uint8
    assert plan.actions.shape == (horizon, 2)
    assert np.all((plan.actions >= 0) & (plan.actions <= 512))


def test_next_real_frame_sees_real_history_only(tiny):
    """Planning between real frames must not change what the model computes for them."""
    fs = frames(5, seed=1)
    a, b = DVAPlanner(*tiny), DVAPlanner(*tiny)
    a.reset(0)
    b.reset(0)
    for i, f in enumerate(fs):
        a.observe(f)
        b.observe(f)
        b.plan(i, np.zeros((0, 2)), 4)  # b dreams after every frame, a never does
    assert torch.equal(a._ctx.tokens, b._ctx.tokens)
    for x, y in zip(snapshot(a.cache), snapshot(b.cache)):
        assert torch.equal(x, y)


def test_committed_actions_condition_and_are_kept_exactly(tiny):
    planner = DVAPlanner(*tiny)
    planner.reset(3)
    planner.observe(frames(1)[0])
    committed = np.array([[123.456789, 400.0], [10.0, 20.0]])
    plan = planner.plan(0, committed, 4)
    np.testing.assert_array_equal(plan.actions[:2], committed)
    assert plan.committed == 2 and plan.start == 0
    # the action conditioning reaches the dream: a different committed action, a different frame
    planner.reset(3)
    planner.observe(frames(1)[0])
    other = planner.plan(0, np.array([[480.0, 30.0], [10.0, 20.0]]), 4)
    assert not np.array_equal(plan.frames[0], other.frames[0])


def test_early_hands_over_the_plan_as_each_free_action_is_read(tiny):
    """plan(early=...) (real time submits each at once): called after every free action but the
    last, with exactly the plan's prefix up to it; not called when nothing is left to dream."""
    planner = DVAPlanner(*tiny)
    committed = np.array([[200.0, 300.0]])
    got = []
    planner.reset(5)
    planner.observe(frames(1)[0])
    plan = planner.plan(0, committed, 4, early=got.append)
    assert [p.horizon for p in got] == [2, 3]  # the 4th is the whole plan, returned
    for p in got:
        assert p.committed == 1 and p.start == 0
        np.testing.assert_array_equal(p.actions, plan.actions[:p.horizon])
        np.testing.assert_array_equal(p.frames, plan.frames[:p.horizon])
    got.clear()
    planner.reset(5)
    planner.observe(frames(1)[0])
    planner.plan(0, np.zeros((0, 2)), 1, early=got.append)
    assert got == []  # a 1-frame plan is its own first action


def test_policy_is_deterministic_and_reads_only_pixels(tiny):
    fs = frames(8, seed=2)

    def run(seed):
        pol = DVAPolicy(DVAPlanner(*tiny), LockstepConfig(delay=1, replan=2, margin=1))
        pol.reset(seed)
        out = []
        for f in fs:  # no 'state' / 'agent_vel' keys: a KeyError would mean privileged access
            out.append(pol.act({"pixels": f}))
        return np.array(out), pol.leap.stats()

    a1, s1 = run(7)
    a2, _ = run(7)
    a3, _ = run(8)
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3), "the seed should drive the sampler noise"
    assert a1.shape == (8, 2) and s1["deadline_misses"] == 0
    assert s1["plans"] == 4  # launched at steps 0, 2, 4, 6; active from 0, 3, 5, 7
    assert s1["horizon"]["max"] == 4


def test_bad_inputs_name_the_problem(tiny):
    planner = DVAPlanner(*tiny)
    with pytest.raises(RuntimeError, match="observe"):
        planner.plan(0, np.zeros((0, 2)), 2)
    with pytest.raises(ValueError, match="uint8 \\(96, 96, 3\\)"):
        planner.observe(np.zeros((96, 96, 3), dtype=np.float32))
    planner.observe(frames(1)[0])
    with pytest.raises(ValueError, match="committed <= horizon"):
        planner.plan(0, np.zeros((3, 2)), 2)
    with pytest.raises(ValueError, match="free_action"):
        PlannerConfig(free_action="bogus")


def test_the_executed_action_reaches_a_model_that_reads_it():
    """plan(..., executed): the action executed into the observed frame conditions the first
    predicted frame of a DVAConfig.prev_action model (and is ignored by one without it)."""
    model, idm = generic(1, prev_action=True)
    planner = DVAPlanner(model, idm)
    plans = []
    for executed in (None, np.array([100.0, 100.0]), np.array([400.0, 300.0])):
        planner.reset(0)
        planner.observe(frames(1)[0])
        plans.append(planner.plan(0, np.zeros((0, 2)), 2, executed))
    assert not np.array_equal(plans[1].frames, plans[2].frames) and not np.array_equal(plans[0].frames, plans[1].frames)
    with pytest.raises(ValueError):
        preset("tiny", prev_action=True, policy_loss=1.0, action_dropout=0.0)


def test_intent_conditions_the_free_dream_on_the_action_head():
    """free_action='intent': each freely dreamed frame is the one the model dreams under the action
    its own head reads off the context it dreams from; a model without a head is refused by name."""
    model, idm = generic(2, action_aux=1.0)
    planner = DVAPlanner(model, idm, cfg=PlannerConfig(free_action="intent"))
    planner.reset(3)
    planner.observe(frames(1)[0])
    plan = planner.plan(0, np.zeros((0, 2)), 1)
    with torch.no_grad():  # the same frame by hand: the same noise, the head's action as the condition
        ctx = planner._ctx
        want_action = model.intent(ctx)[:, 0].clamp(0, 512)
        noise = torch.randn((1, 3, 96, 96), generator=torch.Generator().manual_seed(3))
        want = model.to_frames(model.sample(ctx, want_action, steps=planner.sample_steps, noise=noise))
    np.testing.assert_array_equal(plan.frames[0], want[0].numpy())
    free = DVAPlanner(model, idm)  # the unconditioned free dream is another frame
    free.reset(3)
    free.observe(frames(1)[0])
    assert not np.array_equal(free.plan(0, np.zeros((0, 2)), 1).frames, plan.frames)
    with pytest.raises(ValueError, match="action head"):
        DVAPlanner(DVA(preset("tiny")), IDM(preset("tiny")), cfg=PlannerConfig(free_action="intent"))
    with pytest.raises(ValueError, match="action_aux"):
        preset("tiny", free_action="intent")
    # a checkpoint's own free_action is the planner's default; PlannerConfig overrides it
    model.cfg.free_action = "intent"
    assert DVAPlanner(model, idm).free_action == "intent"
    assert DVAPlanner(model, idm, cfg=PlannerConfig(free_action="none")).free_action == "none"


def test_intent_maps_read_the_frame_before_real_or_dreamed():
    """intent_maps: the head also reads the encoder maps of the frame before. A 2-frame plan after two
    real frames is, bitwise, the one made by hand with the first free action read off (real frame 1,
    real frame 0) and the second off (dreamed frame, real frame 1), each with the planner's noise."""
    model, idm = generic(6, action_aux=1.0, intent_maps=True, free_action="intent")
    planner = DVAPlanner(model, idm)
    planner.reset(3)
    f = frames(2)
    for fr_ in f:
        planner.observe(fr_)
    plan = planner.plan(0, np.zeros((0, 2)), 2)
    with torch.no_grad():
        cache, gen = model.init_cache(1, "cpu"), torch.Generator().manual_seed(3)
        x0, x1 = (model.from_frames(torch.from_numpy(g)[None]) for g in f)
        c0, c1 = model.observe(cache, x0), model.observe(cache, x1)
        assert not torch.equal(model.intent(c1, c0), model.intent(c1))  # the frame before matters
        steps = planner.sample_steps
        d1, cd = model.dream(cache, c1, model.intent(c1, c0)[:, 0].clamp(0, 512), steps,
                             noise=torch.randn((1, 3, 96, 96), generator=gen))
        a = idm(x0, x1, d1).float().clamp(0, 512)
        d2, _ = model.dream(cache, cd, model.intent(cd, c1)[:, 0].clamp(0, 512), steps,
                            noise=torch.randn((1, 3, 96, 96), generator=gen), observe=False, prev_action=a)
    np.testing.assert_array_equal(plan.frames, model.to_frames(torch.cat([d1, d2])).numpy())


def test_intent_steps_take_the_first_free_frames_action_off_the_real_frame():
    """intent_steps = 2, a delay-1 plan (one committed action, then one free frame): the free frame's
    action is the head's a_{t+1} read off the real frame's context, so changing the head's a_t rows
    leaves the plan as it is and changing its a_{t+1} rows changes it."""
    model, idm = generic(4, action_aux=1.0, intent_steps=2, free_action="intent")

    def plan():
        planner = DVAPlanner(model, idm)
        planner.reset(5)
        planner.observe(frames(1)[0])
        return planner.plan(0, np.array([[200.0, 300.0]]), 2).frames

    base = plan()
    last = model.action_head[-1]
    with torch.no_grad():
        last.bias[:2] += 0.5  # a_t
    np.testing.assert_array_equal(plan(), base)
    with torch.no_grad():
        last.bias[2:] += 0.5  # a_{t+1}
    changed = plan()
    np.testing.assert_array_equal(changed[0], base[0])  # the committed frame
    assert not np.array_equal(changed[1], base[1])
