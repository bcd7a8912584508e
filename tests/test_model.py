"""The DVA video model and IDM: shapes, causality, KV-cache decoding == full forward (before and
after the ring wraps), exact rollback of scratch frames, conversions."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from dva.model.config import PRESETS, DVAConfig, preset
from dva.model.dva import DVA, param_count
from dva.model.frames import denorm_action, from_frames, norm_action, to_frames
from dva.model.idm import IDM


def tiny(**kw) -> DVAConfig:
    return preset("tiny", **kw)


def seq(B=2, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 3, 96, 96, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DVA(tiny()).eval()
    # randomize the zero-initialised layers so every path carries signal
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_presets_and_m_param_budget():
    assert set(PRESETS) >= {"tiny", "s", "m"}
    cfg = PRESETS["m"]
    # what runs at inference: the action head (cfg.action_aux) is a training-only loss on the context
    infer = dataclasses.replace(cfg, action_aux=0.0)
    total = param_count(DVA(infer)) + param_count(IDM(cfg))
    assert total < 30_000_000, f"preset m has {total} inference parameters including the IDM"
    assert param_count(DVA(cfg)) - param_count(DVA(infer)) == param_count(DVA(cfg).action_head)
    # s (the package) dreams under its head's intent, so there the head is inference too
    s = PRESETS["s"]
    assert s.free_action == "intent" and param_count(DVA(s)) + param_count(IDM(s)) < 10_000_000
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("xl")
    with pytest.raises(ValueError, match="n_heads"):
        DVAConfig(d_model=30, n_heads=4)


def test_conversions_round_trip():
    u = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8)
    x = from_frames(u)
    assert x.shape == (2, 3, 96, 96) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_frames(x), u)
    a = torch.tensor([[0.0, 512.0], [256.0, 100.0]])
    assert torch.allclose(norm_action(a), torch.tensor([[-1.0, 1.0], [0.0, 100 / 256 - 1]]))
    assert torch.allclose(denorm_action(norm_action(a)), a)
    with pytest.raises(ValueError, match="uint8"):
        from_frames(x)


def test_training_loss_and_grads(model):
    x = seq(2, 4)
    acts = torch.rand(2, 4, 2) * 512
    loss = model(x, acts, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    model.zero_grad()


def test_causality(model):
    """Changing frames after t changes no context at positions <= t."""
    x = seq(2, 6)
    y = x.clone()
    y[:, 3:] = torch.rand_like(y[:, 3:]) * 2 - 1
    N = model.cfg.tokens_per_frame
    with torch.no_grad():
        cx, cy = model.context(x), model.context(y)
    tx, ty = cx.tokens.view(2, 6, N, -1), cy.tokens.view(2, 6, N, -1)  # (B, T, N, D)
    assert torch.equal(tx[:, :3], ty[:, :3])
    assert not torch.allclose(tx[:, 3:], ty[:, 3:])  # and later positions do see the change


def _full_context(model, x):
    with torch.no_grad():
        c = model.context(x)
    B, T = x.shape[:2]
    return c.tokens.view(B, T, *c.tokens.shape[1:])  # (B, T, N, D)


def test_incremental_equals_full_forward_with_wraparound(model):
    """Stepping frames one at a time through the ring (W=4) equals the full forward pass
    (sliding-window block-causal attention) at every position, including after wrap-around."""
    W = model.cfg.window
    T = 2 * W + 3
    x = seq(2, T, seed=3)
    full = _full_context(model, x)
    cache = model.init_cache(2, "cpu")
    with torch.no_grad():
        for t in range(T):
            ctx = model.observe(cache, x[:, t])
            torch.testing.assert_close(ctx.tokens, full[:, t], rtol=1e-4, atol=1e-4)
            # the decoder sees the same thing, so a fixed-noise sample matches too
    assert int(cache.pos) == T


def test_ring_after_wrap_equals_truncated_context():
    """With one transformer layer the window makes the cache exactly a forward pass over the
    last W frames only (deeper layers carry older frames through earlier keys, which is why the
    multi-layer test above compares against the sliding-window forward instead)."""
    torch.manual_seed(1)
    m = DVA(tiny(n_layers=1)).eval()
    W = m.cfg.window
    x = seq(1, W + 3, seed=4)
    cache = m.init_cache(1, "cpu")
    with torch.no_grad():
        for t in range(W + 3):
            ctx = m.observe(cache, x[:, t])
        trunc = _full_context(m, x[:, -W:])[:, -1]
    torch.testing.assert_close(ctx.tokens, trunc, rtol=1e-4, atol=1e-4)


def test_prefill_equals_stepping(model):
    x = seq(1, 6, seed=5)
    c1, c2 = model.init_cache(1, "cpu"), model.init_cache(1, "cpu")
    with torch.no_grad():
        a = model.prefill(c1, x)
        for t in range(6):
            b = model.observe(c2, x[:, t])
        nxt = seq(1, 1, seed=6)[:, 0]
        a2, b2 = model.observe(c1, nxt), model.observe(c2, nxt)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a2.tokens, b2.tokens, rtol=1e-4, atol=1e-4)


def test_mark_rollback_is_exact(model):
    """Scratch (predicted) frames observed after mark() leave no trace after rollback()."""
    x = seq(1, 8, seed=7)
    ref, c = model.init_cache(1, "cpu"), model.init_cache(1, "cpu")
    with torch.no_grad():
        for t in range(5):
            model.observe(ref, x[:, t])
            ctx = model.observe(c, x[:, t])
        mark = c.mark(horizon=3)
        for _ in range(3):  # dream 3 frames (the ring of 4 wraps over real frames)
            pred = model.sample(ctx, torch.tensor([[200.0, 300.0]]), steps=2,
                                generator=torch.Generator().manual_seed(0))
            ctx = model.observe(c, pred)
        c.rollback(mark)
        a = model.observe(ref, x[:, 5])
        b = model.observe(c, x[:, 5])
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(ref.slot_pos, c.slot_pos) and int(ref.pos) == int(c.pos)
    for k1, k2 in zip(ref.k, c.k):
        assert torch.equal(k1, k2)
    c.mark(horizon=1)
    m2 = c.mark(horizon=1)
    with torch.no_grad():
        model.observe(c, x[:, 6])
        model.observe(c, x[:, 7])
    with pytest.raises(ValueError, match="horizon"):
        c.rollback(m2)


def test_sample_shapes_determinism_and_action_effect(model):
    x = seq(2, 3, seed=8)
    cache = model.init_cache(2, "cpu")
    with torch.no_grad():
        for t in range(3):
            ctx = model.observe(cache, x[:, t])
        noise = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        a1 = model.sample(ctx, torch.tensor([[10.0, 10.0], [10.0, 10.0]]), steps=4, noise=noise)
        a2 = model.sample(ctx, torch.tensor([[10.0, 10.0], [10.0, 10.0]]), steps=4, noise=noise)
        b = model.sample(ctx, torch.tensor([[500.0, 400.0], [500.0, 400.0]]), steps=4, noise=noise)
        c = model.sample(ctx, None, steps=1, noise=noise)
    assert a1.shape == (2, 3, 96, 96) and a1.min() >= -1 and a1.max() <= 1
    assert torch.equal(a1, a2)
    assert not torch.allclose(a1, b)  # the action conditions the prediction
    assert c.shape == a1.shape
    assert model.to_frames(a1).shape == (2, 96, 96, 3)
    with pytest.raises(ValueError, match="sampler steps"):
        model.sample(ctx, None, steps=0)


def test_idm_shapes_and_loss():
    torch.manual_seed(0)
    cfg = tiny()
    idm = IDM(cfg)
    x = seq(2, 5)
    acts = torch.rand(2, 5, 2) * 512
    a = idm(x[:, 0], x[:, 1], x[:, 2])
    assert a.shape == (2, 2)
    loss, err = idm.loss(x, acts)
    loss.backward()
    assert torch.isfinite(loss) and err > 0
    with pytest.raises(ValueError, match="at least 3"):
        idm.loss(x[:, :2], acts[:, :2])


def test_long_training_sequences_beyond_window():
    """L=64 with W=4: the training forward uses the sliding window and still matches decoding."""
    torch.manual_seed(2)
    m = DVA(dataclasses.replace(tiny(), n_layers=1, d_model=16, n_heads=2)).eval()
    x = seq(1, 64, seed=9) * 0.5
    with torch.no_grad():
        loss = m(x, torch.rand(1, 64, 2) * 512)
    assert torch.isfinite(loss)
    full = _full_context(m, x[:, :12])
    cache = m.init_cache(1, "cpu")
    with torch.no_grad():
        for t in range(12):
            ctx = m.observe(cache, x[:, t])
    torch.testing.assert_close(ctx.tokens, full[:, -1], rtol=1e-4, atol=1e-4)


def test_t_iou_measures_the_dreamed_t():
    """The T-rigidity metric of validation: 1 for the same frame, lower for a moved T, 0 without
    a T, and unaffected by where the disc is."""
    from dva.model.frames import from_frames
    from dva.pusht.validate import t_iou
    from dva.pusht import render_frames

    s = torch.tensor([[100.0, 100.0, 300.0, 280.0, 0.7],
                      [400.0, 420.0, 300.0, 280.0, 0.7],   # disc elsewhere, same T
                      [100.0, 100.0, 310.0, 280.0, 0.7],   # T moved by 10 px
                      [100.0, 100.0, 300.0, 280.0, 1.2]], dtype=torch.float64)
    x = from_frames(render_frames(s))
    iou = t_iou(x[[0, 1, 2, 3]], x[[0, 0, 0, 0]])
    assert iou[0] == 1.0
    assert iou[1] > 0.97, iou
    assert 0.3 < iou[2] < 0.9 and iou[3] < 0.9, iou
    white = torch.ones_like(x[:1])
    assert t_iou(white, x[:1]).item() == 0.0


def test_t_rigid_iou_tells_a_moved_t_from_a_dissolved_one():
    from dva.model.frames import from_frames
    from dva.pusht.validate import t_iou, t_rigid_iou
    from dva.pusht import render_frames

    g = torch.Generator().manual_seed(1)
    true = torch.tensor([[100.0, 100.0, 300.0, 280.0, 0.7]] * 6, dtype=torch.float64)
    moved = true.clone()  # rows 1-4: rigidly elsewhere, at poses off the search's grid
    moved[1:5, 2:4] += (torch.rand(4, 2, generator=g, dtype=torch.float64) * 2 - 1) * 15
    moved[1:5, 4] += (torch.rand(4, generator=g, dtype=torch.float64) * 2 - 1) * 0.25
    x = from_frames(render_frames(moved))
    x[5, :, ::2] = 1.0  # every other row of the T erased: no longer a rigid T
    r = t_rigid_iou(x, true)
    assert r[0] > 0.999 and (r[1:5] > 0.97).all() and r[1:5].mean() > 0.99, r
    assert (t_iou(x[1:5], from_frames(render_frames(true[:4]))) < 0.85).all()
    assert r[5] < 0.6, r


def test_self_forcing_swaps_context_frames_for_the_models_own_predictions():
    """With self_forcing=1 every context frame after the first is the model's 1-step prediction
    of it from the real frames before it (what an autoregressive dream feeds back); frame 0 and
    the eval-mode loss are untouched."""
    torch.manual_seed(0)
    m = DVA(preset("tiny", self_forcing=1.0))
    x = torch.rand(2, 5, 3, 96, 96) * 2 - 1
    act = torch.rand(2, 5, 2) * 512
    clean = x[:, :-1]
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    seen = m._self_force(clean, act, generator=g())[0]
    assert torch.equal(seen[:, 0], clean[:, 0])
    ctx = m.context(clean[:, :-1])
    want = m.sample(ctx, act[:, :3].flatten(0, 1), steps=1, generator=g()).view(2, 3, 3, 96, 96)
    torch.testing.assert_close(seen[:, 1:], want, rtol=0, atol=1e-6)
    assert (seen[:, 1:] - clean[:, 1:]).abs().mean() > 0.1  # an untrained model predicts badly

    off = DVA(preset("tiny"))
    off.load_state_dict(m.state_dict())

    def loss(model, train):
        model.train(train)
        return model(x, act, generator=torch.Generator().manual_seed(3)).item()

    assert loss(m, False) == loss(off, False)
    assert loss(m, True) != loss(off, True)
    with pytest.raises(ValueError, match="self_forcing"):
        preset("tiny", self_forcing=1.5)


def test_self_forcing_depth_is_the_exact_autoregressive_rollout():
    """With self_forcing=1 and depth K, frames 1..K of the context are the model's own
    autoregressive dream from frame 0 (each predicted from the dreamed frames before it, with
    the same noise), and frames after K are K-deep approximations of it; depth 1 is one pass."""
    torch.manual_seed(0)
    T, K = 5, 3
    m = DVA(preset("tiny", warp=True, self_forcing=1.0, self_forcing_depth=K))
    with torch.no_grad():  # a non-zero warp head, so the rollout resamples the dreamed frames
        m.decoder.flow.weight.normal_(0, 0.05)
    x = torch.rand(2, T, 3, 96, 96) * 2 - 1
    act = torch.rand(2, T, 2) * 512
    seen = m._self_force(x, act, generator=torch.Generator().manual_seed(5))[0]
    noise = torch.randn((2 * (T - 1), 3, 96, 96), generator=torch.Generator().manual_seed(5)).view(2, T - 1, 3, 96, 96)
    dream = [x[:, 0]]
    for i in range(1, T):  # the rollout, one frame at a time
        ctx = m.context(torch.stack(dream, 1))
        nxt = m.sample(ctx, act[:, :i].flatten(0, 1), steps=1, noise=noise[:, :i].flatten(0, 1))
        dream.append(nxt.view(2, i, 3, 96, 96)[:, -1])
    dream = torch.stack(dream, 1)
    torch.testing.assert_close(seen[:, : K + 1], dream[:, : K + 1], rtol=0, atol=1e-4)  # batch shapes differ
    assert (seen[:, K + 1:] - dream[:, K + 1:]).abs().amax() > 1e-2  # beyond K: not yet converged
    one = DVA(preset("tiny", warp=True, self_forcing=1.0))
    one.load_state_dict(m.state_dict())
    first = one._self_force(x, act, generator=torch.Generator().manual_seed(5))[0]
    torch.testing.assert_close(first[:, :2], dream[:, :2], rtol=0, atol=1e-4)  # frame 1: exact at any depth
    assert (first[:, 2] - dream[:, 2]).abs().amax() > 1e-2  # frame 2 is from the real frame 1
    with pytest.raises(ValueError, match="self_forcing_depth"):
        preset("tiny", self_forcing_depth=0)


@pytest.mark.parametrize("kind,warp_loss,flow_loss,body_masks", [("mse", 0.0, 0.0, 0.0), ("l1", 0.0, 0.0, 0.0),
                                                                ("l1", 0.5, 0.0, 0.0), ("l1", 0.5, 0.2, 0.0),
                                                                ("l1", 0.5, 0.2, 0.3)])
def test_loss_is_the_motion_weighted_pixel_error(kind, warp_loss, flow_loss, body_masks):
    """The training loss is the motion-weighted mean of (x_hat - target)^2 or |x_hat - target|,
    plus warp_loss times the same error of the warped frame alone, plus flow_loss times the
    weighted L1 (px) of the dense displacement against the true motion of the states, plus
    body_masks times the weighted cross-entropy of the rigid layers' masks against the bodies of
    the next frame, each recomputed here from the decoder's actual outputs."""
    from dva.pusht.flow import body_labels, motion_field

    torch.manual_seed(0)
    m = DVA(preset("tiny", loss=kind, motion_weight=5.0, warp=warp_loss > 0, warp_loss=warp_loss,
                   flow_loss=flow_loss, warp_layers=3 if body_masks else 0, body_masks=body_masks))
    if warp_loss:  # a non-zero displacement, so that the warped frame differs from frame t
        torch.nn.init.normal_(m.decoder.flow.weight, std=0.05)
    if body_masks:  # masks that are not all-static
        torch.nn.init.normal_(m.decoder.rigid.mask.weight, std=0.5)
    x = torch.rand(2, 4, 3, 96, 96) * 2 - 1
    act = torch.rand(2, 4, 2) * 512
    states = torch.tensor([200.0, 200.0, 256.0, 300.0, 0.5]) + torch.randn(2, 4, 5) * torch.tensor([20, 20, 5, 5, 0.1])
    from dva.train import simulator_targets

    with m.record() as outs:
        loss = m.eval()(x, act, generator=torch.Generator().manual_seed(1), **simulator_targets(states, m.cfg))
    x_hat, warped, disp, logits = outs[0].x_hat, outs[0].warped, outs[0].dense, outs[0].logits
    target, prev = x[:, 1:].flatten(0, 1), x[:, :-1].flatten(0, 1)
    w = 1 + 5.0 * ((target - prev).abs().amax(1, keepdim=True) > 0.1).float()

    def err(pred):
        e = pred - target
        return ((e**2 if kind == "mse" else e.abs()) * w).sum() / (w.sum() * 3)

    want = err(x_hat) + warp_loss * err(warped)
    if warp_loss:
        assert (warped - prev).abs().mean() > 1e-3
    if flow_loss:
        true = motion_field(states[:, :-1], states[:, 1:]).flatten(0, 1)  # (6, 2, 96, 96)
        wf = 1 + 5.0 * (true.norm(dim=1, keepdim=True) > 0.05).float()
        true, wf = torch.nn.functional.avg_pool2d(true, 2), torch.nn.functional.avg_pool2d(wf, 2)  # the head's 48 px
        assert disp.shape == true.shape and true.abs().amax() > 0.5  # the bodies did move
        want = want + flow_loss * ((disp - true).abs() * wf).sum() / (wf.sum() * 2)
        with pytest.raises(ValueError, match="states"):
            m(x, act)
    if body_masks:
        lab = body_labels(states[:, 1:]).flatten(0, 1)[:, 1::2, 1::2]  # the next frames' bodies at the masks' 48 px
        assert logits.shape == (6, 3, 48, 48) and (lab == 1).any() and (lab == 2).any()
        wm = 1 + 5.0 * (lab > 0).float()
        want = want + body_masks * (torch.nn.functional.cross_entropy(logits, lab, reduction="none") * wm).sum() / wm.sum()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="warp_loss"):
        preset("tiny", warp_loss=0.5)  # needs the warp head
    with pytest.raises(ValueError, match="loss"):
        preset("tiny", loss="huber")


def test_warp_moves_pixels_and_a_zero_head_is_the_residual_model():
    """warp(frame, flow) samples frame at p + flow(p) (pixels of the full frame); the warp head is
    zero at init, so a warp model starts as exactly the model it is fine-tuned from."""
    from dva.model.unet import warp

    f = torch.rand(2, 3, 96, 96)
    # atol: fp32 rounding of the sample coordinates (~1e-7 in [-1, 1] units, x48 px); a shift off
    # by one pixel would be off by ~0.3 here
    torch.testing.assert_close(warp(f, torch.zeros(2, 2, 48, 48)), f, rtol=0, atol=5e-5)
    flow = torch.zeros(2, 2, 48, 48)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # out(x, y) = f(x + 3, y - 2)
    torch.testing.assert_close(warp(f, flow)[..., 2:, :93], f[..., :94, 3:], rtol=0, atol=5e-5)

    torch.manual_seed(0)
    plain = DVA(preset("tiny")).eval()
    warped = DVA(preset("tiny", warp=True)).eval()
    missing = warped.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["decoder.flow.bias", "decoder.flow.weight"]
    x = torch.rand(2, 4, 3, 96, 96) * 2 - 1
    act = torch.rand(2, 4, 2) * 512
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    torch.testing.assert_close(warped(x, act, generator=g()), plain(x, act, generator=g()), rtol=1e-5, atol=1e-6)
    loss = DVA(preset("tiny", warp=True)).train()(x, act, generator=g())
    loss.backward()


def test_bicubic_warp_keeps_a_t_through_repeated_subpixel_warps():
    """A dream warps the previous dream again and again. 8 warps of 0.375 / -0.25 px should give
    the T moved by (3, -2) px: bicubic sampling keeps it (T-IoU with the one-shot warp ~0.94),
    bilinear blurs it (~0.81): what dva.pusht.warp_ceiling compares. Both are exact for zero and
    whole-pixel shifts."""
    from dva.model.unet import warp
    from dva.pusht.validate import t_iou
    from dva.pusht import render_frames

    f = from_frames(render_frames(torch.tensor([[100.0, 100.0, 256.0, 256.0, 0.7]], dtype=torch.float64)))
    step, once = torch.zeros(1, 2, 48, 48), torch.zeros(1, 2, 48, 48)
    step[:, 0], step[:, 1], once[:, 0], once[:, 1] = 0.375, -0.25, 3.0, -2.0
    iou = {}
    for mode in ("bilinear", "bicubic"):
        torch.testing.assert_close(warp(f, torch.zeros(1, 2, 48, 48), mode), f, rtol=0, atol=5e-5)
        torch.testing.assert_close(warp(f, once, mode)[..., 2:, :93], f[..., :94, 3:], rtol=0, atol=5e-5)
        g = f
        for _ in range(8):
            g = warp(g, step, mode).clamp(-1, 1)  # as the sampler clamps each dreamed frame
        iou[mode] = float(t_iou(g, warp(f, once, mode)))
    assert iou["bicubic"] > 0.9 and iou["bilinear"] < 0.85, iou


def test_retired_options_load_only_where_they_change_nothing():
    """Deleted options in an old checkpoint's JSON: dropped when they hold what is now built in
    (or never touched inference), refused with the option named otherwise."""
    base = preset("tiny").to_dict()
    assert DVAConfig.from_dict({**base, "backend": "triton", "ctx_noise": 0.12, "warp_interp": "bilinear"}) == preset("tiny")
    with pytest.raises(ValueError, match="warp_interp='bicubic': an option dva no longer has"):
        DVAConfig.from_dict({**base, "warp_interp": "bicubic"})


def test_warp_ceiling_cli_names_bad_input(tmp_path, capsys):
    from dva.pusht import warp_ceiling

    assert warp_ceiling.main(["--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        warp_ceiling.main(["--sequences", "0"])
    assert "--sequences must be >= 1" in capsys.readouterr().err


def test_warp_stats_credit_a_displacement_that_follows_the_motion():
    """A frame whose content moved 2 px: the true displacement makes the warped frame alone match
    it (L1 on the moving pixels ~0, far below copying) and its magnitude is read back in px."""
    from dva.pusht.validate import warp_stats
    from dva.pusht.render import render_frames

    state = torch.tensor([[200.0, 300.0, 256.0, 256.0, 0.7]])
    frame = from_frames(render_frames(state))  # (1, 3, 96, 96)
    target = torch.cat([frame[..., 2:], frame[..., -1:].expand(-1, -1, -1, 2)], -1)  # frame(x + 2), edge held
    flow = torch.zeros(1, 2, 48, 48)
    flow[:, 0] = 2.0  # px
    s = warp_stats(frame, target, target, flow)
    assert abs(s["flow_px_on_t"] - 2.0) < 1e-4 and abs(s["flow_px_moving"] - 2.0) < 1e-4
    assert s["l1_moving_copy"] > 0.1 and s["l1_moving_warp_only"] < 1e-4
    assert s["l1_moving_model"] == 0.0
    still = warp_stats(frame, target, target, torch.zeros(1, 2, 48, 48))
    assert abs(still["l1_moving_warp_only"] - still["l1_moving_copy"]) < 1e-4 and still["flow_px_on_t"] == 0.0


def test_rigid_layers_fit_one_rotation_and_shift_per_layer():
    """warp_layers=K: each layer moves by the least-squares rigid fit of the dense field on its
    pixels. A field that is a rigid motion is reproduced exactly at full resolution; a bent field
    (halves shifted apart) becomes one rigid motion with one layer (its mean shift) and is kept
    exactly when the layers split at the bend; masks and the dense head both get gradients."""
    from dva.model.unet import RigidLayers

    r = RigidLayers(8, 2)
    r.mask = torch.nn.Identity()  # so the test sets the mask logits directly
    n, size = 48, 96
    c = (torch.arange(n) + 0.5) * 2 - 48
    px, py = c.view(1, n).expand(n, n), c.view(n, 1).expand(n, n)
    ang, t = 0.12, (3.0, -1.5)
    flow = torch.stack([math.cos(ang) * px - math.sin(ang) * py + t[0] - px,
                        math.sin(ang) * px + math.cos(ang) * py + t[1] - py])[None]  # (1, 2, 48, 48)
    one = torch.zeros(1, 2, n, n)
    one[:, 0] = 5.0  # layer 0 owns every pixel
    d = r(one, flow, size)[0]
    full = torch.nn.functional.interpolate(flow, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(d[..., 4:-4, 4:-4], full[..., 4:-4, 4:-4], rtol=0, atol=2e-3)  # rigid: linear in p

    bent = torch.zeros(1, 2, n, n)
    bent[:, 0, :, : n // 2], bent[:, 0, :, n // 2:] = 2.0, -2.0  # the left half moves right, the right half left
    d = r(one, bent, size)[0]
    assert d[:, 0].abs().max() < 1e-3 and d[:, 1].abs().max() < 1e-3  # one layer: the mean motion (none)
    split = torch.zeros(1, 2, n, n)
    split[:, 0, :, : n // 2], split[:, 1, :, n // 2:] = 5.0, 5.0
    d = r(split, bent, size)[0]
    torch.testing.assert_close(d[:, 0, :, :44], torch.full((1, 96, 44), 2.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(d[:, 0, :, 52:], torch.full((1, 96, 44), -2.0), rtol=0, atol=1e-4)

    torch.manual_seed(0)
    m = DVA(preset("tiny", warp=True, warp_layers=3, warp_loss=0.5)).train()
    with torch.no_grad():  # a non-zero dense field (at init it is zero: no gradient reaches the masks)
        m.decoder.flow.weight.normal_(0, 0.05)
    x = torch.rand(2, 4, 3, 96, 96) * 2 - 1
    m(x, torch.rand(2, 4, 2) * 512, generator=torch.Generator().manual_seed(2)).backward()
    assert m.decoder.flow.weight.grad.abs().sum() > 0 and m.decoder.rigid.mask.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="warp_layers"):
        preset("tiny", warp_layers=3)  # needs the warp head

    # supervised body layers: layer 0 (the rest of the scene) keeps the dense field as it is, bent
    # or not; its masks start all-layer-0 (zero logits), so the model starts as the dense-head one
    hybrid = RigidLayers(8, 3, dense_rest=True)
    up = torch.nn.functional.interpolate(bent, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(hybrid(torch.rand(1, 8, n, n), bent, size)[0], up)
    hybrid.mask = torch.nn.Identity()
    three = torch.zeros(1, 3, n, n)
    three[:, 0, :, : n // 2], three[:, 1, :, n // 2:] = 5.0, 5.0  # left half: the rest; right: a body
    curved = bent.clone()
    curved[:, 1, :, n // 2:] = torch.linspace(-1, 1, n).view(n, 1)  # the body's half also shears in y
    d = hybrid(three, curved, size)[0]
    torch.testing.assert_close(d[:, :, :, :44], up[:, :, :, :44])  # the dense field, +2 px
    torch.testing.assert_close(d[:, 0, :, 52:], torch.full((1, 96, 44), -2.0), rtol=0, atol=0.2)
    assert (d[:, 1, :, 52:] - d[:, 1, :, 52:].mean()).abs().max() < 0.15  # the body: no shear left, up to its fitted turn
    with pytest.raises(ValueError, match="body_masks"):
        preset("tiny", warp=True, warp_layers=4, body_masks=0.1)  # the labels are 3 bodies


def test_rigid_layers_hard_masks_are_the_argmax_one_hot():
    """RigidLayers._hard (the fast form) against one_hot(argmax): ties go to the first layer."""
    from dva.model.unet import RigidLayers

    g = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 96, 96), (2, 2, 48, 48), (3, 5, 7, 9)]:
        x = torch.randn(shape, generator=g).round()  # many exact ties
        x[0, :, :3] = 0.0  # every layer tied
        ref = torch.nn.functional.one_hot(x.argmax(1), shape[1]).permute(0, 3, 1, 2).float()
        assert torch.equal(RigidLayers._hard(x), ref)


@pytest.mark.parametrize("layers", [0, 3])
def test_validate_reads_either_warp_head_in_pixels(layers):
    """validate's warp stats hook the dense head (raw output x FLOW_GAIN) or the rigid layers
    (already in px): a head that shifts everything by (2, 0) px reads back as 2 px."""
    from dva.model.unet import FLOW_GAIN
    from dva.pusht.validate import validate

    torch.manual_seed(0)
    m = DVA(preset("tiny", warp=True, warp_layers=layers)).eval()
    with torch.no_grad():
        m.decoder.flow.bias[0] = 2.0 / FLOW_GAIN  # a shift, which the rigid layers keep as it is
    x = torch.rand(1, 5, 3, 96, 96) * 2 - 1
    # the T slides 2 px left per frame (the disc stays): its true backward motion is the head's (+2, 0)
    t = torch.arange(5, dtype=torch.float32)
    states = torch.stack([torch.full_like(t, 100.0), torch.full_like(t, 100.0), 300.0 - 2 * 512 / 96 * t,
                          torch.full_like(t, 300.0), torch.full_like(t, 0.4)], -1)[None]  # (1, 5, 5)
    met, _ = validate(m, None, x, torch.rand(1, 5, 2) * 512, n_ctx=2, steps=1, states=states)
    assert abs(met["flow_px_moving"] - 2.0) < 1e-4 and met["l1_moving_warp_only"] != met["l1_moving_copy"]
    assert abs(met["flow_px_true_bodies"] - 2.0) < 1e-4 and met["flow_epe_px_bodies"] < 1e-4
    assert abs(met["flow_gain_bodies"] - 1.0) < 1e-4  # teacher-forced, and at every dream step:
    assert len(met["flow_gain_ar_per_step"]) == 3 and all(abs(g - 1.0) < 1e-3 for g in met["flow_gain_ar_per_step"])
    m2, _ = validate(m, None, x, torch.rand(1, 5, 2) * 512, n_ctx=2, steps=1, states=states.flip(1))
    assert abs(m2["flow_gain_bodies"] + 1.0) < 1e-4  # the T moving the other way: the head carries -1 of it


def test_validate_scores_the_body_layers_against_the_next_frames_t():
    """With supervised body layers (body_masks), validate reports the IoU of the T's layer with
    the T of each next frame: 1 for masks that are the true bodies, 0 for masks with no T."""
    from dva.pusht.validate import validate
    from dva.pusht.flow import body_labels

    torch.manual_seed(0)
    m = DVA(preset("tiny", warp=True, warp_layers=3, body_masks=0.1)).eval()
    states = torch.tensor([200.0, 200.0, 256.0, 300.0, 0.5]) + torch.randn(1, 5, 5) * torch.tensor([20, 20, 5, 5, 0.1])
    true = torch.nn.functional.one_hot(body_labels(states[0, 1:])[:, 1::2, 1::2], 3).permute(0, 3, 1, 2).float()

    class Fixed(torch.nn.Module):  # the teacher-forced pass predicts the 4 next frames at once
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, h):
            return self.logits if h.shape[0] == self.logits.shape[0] else self.logits[-h.shape[0]:]

    x = torch.rand(1, 5, 3, 96, 96) * 2 - 1
    act = torch.rand(1, 5, 2) * 512
    m.decoder.rigid.mask = Fixed(true * 5)
    met, _ = validate(m, None, x, act, n_ctx=2, steps=1, states=states)
    assert abs(met["mask_iou_t"] - 1.0) < 1e-6
    m.decoder.rigid.mask = Fixed(torch.zeros_like(true))  # all static: the zero-initialised masks
    assert validate(m, None, x, act, n_ctx=2, steps=1, states=states)[0]["mask_iou_t"] == 0.0


def test_policy_loss_reads_the_free_dream_through_a_frozen_idm():
    """policy_loss adds the L1 (in [-1, 1] units, weighted by 1 - tau) between the action the IDM
    reads off each freely predicted frame (frames t-1, t as seen; frame t again at t = 0) and the
    data's action, on the samples whose action was hidden; its gradient reaches the video model,
    never the IDM."""
    from dva.train import Trainee

    torch.manual_seed(0)
    cfg = tiny(loss="l1", action_dropout=0.5, policy_loss=2.0)
    net = Trainee(cfg, "both").train()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, act = seq(2, 5), torch.rand(2, 5, 2) * 512
    got = {}
    h = net.dva.decoder.register_forward_hook(lambda mod, inp, out: got.update(inp=inp, out=out))
    loss = net(x, act, generator=torch.Generator().manual_seed(1))["loss_dva"]
    h.remove()
    base = DVA(dataclasses.replace(cfg, policy_loss=0.0)).train()
    base.load_state_dict(net.dva.state_dict())
    loss0 = base(x, act, generator=torch.Generator().manual_seed(1))  # the same tau, noise and dropout
    tau, keep, x_hat = got["inp"][1], got["inp"][4], got["out"].x_hat
    free = ~keep
    assert free.any() and keep.any()
    prev, cur = torch.cat([x[:, :1], x[:, :-2]], 1).flatten(0, 1), x[:, :-1].flatten(0, 1)
    with torch.no_grad():
        read = norm_action(net.idm(prev[free], cur[free], x_hat[free]))
    w = (1 - tau[free])[:, None]
    term = ((read - norm_action(act[:, :-1].flatten(0, 1))[free]).abs() * w).sum() / (w.sum() * 2)
    assert term > 1e-3
    torch.testing.assert_close(loss, loss0 + 2.0 * term, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in net.idm.parameters()), "the policy loss must not train the IDM"
    assert float(net.dva.decoder.stem.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="action_reader"):
        net.dva(x, act)
    with pytest.raises(ValueError, match="action_dropout"):
        tiny(policy_loss=1.0, action_dropout=0.0)


def test_prev_action_starts_as_the_model_without_it_and_then_conditions_the_dream():
    """DVAConfig.prev_action: zero-initialised, a model with it predicts exactly what the same
    weights without it predict; once trained (here: random weights) the dream depends on the
    action executed into frame t, which training takes from the sequence (unknown at frame 0)."""
    torch.manual_seed(0)
    base = DVA(tiny()).eval()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m = DVA(tiny(prev_action=True)).eval()
    missing = m.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith(("decoder.prev_emb.", "decoder.null_prev")) for k in missing)
    x, act = seq(1, 3), torch.tensor([[[100.0, 200.0], [300.0, 50.0], [0.0, 0.0]]])
    ctx = base.context(x)
    noise = torch.randn(3, 3, 96, 96)
    want = base.sample(ctx, act[0], steps=2, noise=noise)
    got = m.sample(m.context(x), act[0], steps=2, noise=noise, prev_action=torch.full((3, 2), 400.0))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():
        torch.nn.init.normal_(m.decoder.prev_emb.mlp[-1].weight, std=0.5)
    a = m.sample(m.context(x), act[0], steps=2, noise=noise, prev_action=torch.full((3, 2), 400.0))
    b = m.sample(m.context(x), act[0], steps=2, noise=noise, prev_action=torch.full((3, 2), 100.0))
    assert (a - b).abs().max() > 1e-3
    p, known = m.prev_actions(act)
    assert known.tolist() == [False, True, True]
    torch.testing.assert_close(p[1:], norm_action(act[0, :2]))


def test_the_model_package_knows_no_simulator():
    """dva.model is a generic video-action model: frames, actions, optional per-pixel targets.
    PushT (dva.pusht) and its dataset format (dva.data) stay outside it."""
    import ast

    pkg = Path(__file__).resolve().parents[1] / "dva" / "model"
    bad = []
    for f in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{f.name}: {n}" for n in names if n.startswith(("dva.pusht", "dva.data"))]
    assert not bad, f"dva/model imports the simulator or the dataset format: {bad}"


def test_preset_s_is_the_shipped_model_and_the_cli_is_its_fields():
    """Presets are what ships: preset s equals the packaged checkpoint's config field for field, and
    dva.train's command line has one flag per config field, its default s's (nothing mirrored)."""
    import json

    from dva.train_args import TrainConfig, build_parser, model_config, parse_args

    meta = json.loads((Path(__file__).resolve().parents[1] / "dva" / "assets" / "dva_s.json").read_text())
    assert preset("s") == DVAConfig.from_dict({**meta["config"], "name": "s"})
    flags = {a.dest for a in build_parser()._actions} - {"help"}
    fields = {f.name for cls in (TrainConfig, DVAConfig) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
    assert flags == fields
    assert model_config(parse_args(["--data", "expert=dva", "--mix", "0:expert=1"])) == preset("s")
    cfg = parse_args(["--data", "expert=dva", "--mix", "0:expert=1", "--preset", "tiny", "--warp", "--enc-ch", "8", "8", "16",
                      "--groups", "4", "--no-warp-anchor"])
    assert model_config(cfg) == preset("tiny", warp=True, enc_ch=(8, 8, 16), groups=4, warp_anchor=False)


def test_action_range_maps_the_datas_units_to_unit_range():
    """DVAConfig.action_range: PushT's default is exactly a / 256 - 1; any (low, high) maps low -> -1,
    high -> 1 and back, and the IDM reports actions in those units."""
    a = torch.tensor([[0.0, 512.0], [100.0, 37.5]])
    torch.testing.assert_close(norm_action(a), a / 256 - 1, rtol=0, atol=0)
    rng = (-0.5, 1.5)
    b = torch.tensor([[-0.5, 1.5], [0.5, 0.0]])
    torch.testing.assert_close(norm_action(b, rng), torch.tensor([[-1.0, 1.0], [0.0, -0.5]]))
    torch.testing.assert_close(denorm_action(norm_action(b, rng), rng), b)
    idm = IDM(tiny(action_range=rng)).eval()
    f = torch.zeros(1, 3, 96, 96)
    torch.testing.assert_close(idm(f, f, f), denorm_action(idm.forward_norm(f, f, f), rng))
    with pytest.raises(ValueError, match="action_range"):
        tiny(action_range=(1.0, 1.0))


def _with_and_without_head(**head):
    """A `tiny` model with the action head configured by `head`, the same weights without it, a
    batch, and both models' training losses on it with the same noise."""
    torch.manual_seed(0)
    m1 = DVA(tiny(**head)).eval()
    m0 = DVA(tiny()).eval()
    m0.load_state_dict({k: v for k, v in m1.state_dict().items() if not k.startswith("action_head.")})
    x = torch.rand(2, 4, 3, 96, 96) * 2 - 1
    act = torch.rand(2, 4, 2) * 512
    return (m1, x, act, m1(x, act, generator=torch.Generator().manual_seed(3)),
            m0(x, act, generator=torch.Generator().manual_seed(3)))


def test_action_aux_adds_the_heads_l1_on_the_context():
    """DVAConfig.action_aux: the loss grows by exactly weight x L1(head(context of frame t), a_t)
    (same weights, same noise), and the head and the trunk get its gradient."""
    m1, x, act, l1, l0 = _with_and_without_head(action_aux=0.5)
    with torch.no_grad():
        head = m1.action_head(m1.context(x[:, :-1]).tokens.flatten(1))
    want = 0.5 * (head - norm_action(act[:, :-1].flatten(0, 1))).abs().mean()
    torch.testing.assert_close(l1 - l0, want, rtol=1e-4, atol=1e-6)
    l1.backward()
    assert m1.action_head[0].weight.grad.abs().sum() > 0 and m1.encoder.stem.weight.grad.abs().sum() > 0
    assert DVA(tiny()).action_head is None
    with pytest.raises(ValueError, match="action_aux"):
        tiny(action_aux=-1.0)


def test_intent_maps_reads_the_encoder_maps_of_frames_t_minus_1_and_t():
    """DVAConfig.intent_maps: the head adds a conv of the encoder's second-level maps of frames t-1
    and t (frame 0: itself twice) into its hidden layer. It starts as the head without it (the last
    layer is zero); with weights, the loss is the L1 of that head by hand, the conv and the encoder
    get its gradient, and intent(ctx, prev) reads prev's maps."""
    m1, x, act, l1, l0 = _with_and_without_head(action_aux=1.0)
    torch.manual_seed(1)
    m2 = DVA(tiny(action_aux=1.0, intent_maps=True)).eval()
    m2.load_state_dict(m1.state_dict(), strict=False)
    torch.testing.assert_close(m2(x, act, generator=torch.Generator().manual_seed(3)), l1)  # zero-initialised
    with torch.no_grad():
        m2.intent_conv[-1].weight.normal_(0.0, 0.05)
    loss = m2(x, act, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ctx = m2.context(x[:, :-1])
        maps = ctx.feats[1].view(2, 3, *ctx.feats[1].shape[1:])
        errs = []
        for t in range(3):
            pair = torch.cat([maps[:, max(t - 1, 0)], maps[:, t]], dim=1)
            h = m2.action_head[0](ctx.tokens.view(2, 3, -1)[:, t]) + m2.intent_conv(pair)
            errs.append((m2.action_head[2](m2.action_head[1](h)) - norm_action(act[:, t])).abs())
        head_loss = torch.stack(errs).mean()
        a, b = m2.context(x[:, :1]), m2.context(x[:, 1:2])
        by_hand = m2.action_head[2](m2.action_head[1](
            m2.action_head[0](b.tokens.flatten(1)) + m2.intent_conv(torch.cat([a.feats[1], b.feats[1]], 1))))
        torch.testing.assert_close(m2.intent(b, a), denorm_action(by_hand).view(-1, 1, 2))
        assert not torch.allclose(m2.intent(b, a), m2.intent(b))
    torch.testing.assert_close(loss - l0, head_loss, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert m2.intent_conv[0].weight.grad.abs().sum() > 0 and m2.encoder.blocks[1].c2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="intent_maps"):
        tiny(intent_maps=True)


def test_intent_steps_reads_the_next_k_actions_where_the_sequence_has_them():
    """DVAConfig.intent_steps = K: the head reads a_t .. a_{t+K-1} off the context of frame t; its
    loss is the L1 over the actions the sequence holds (a_{t+k} for t + k <= L - 1), checked by a
    loop over positions; intent() gives them in px, (B, K, 2)."""
    m2, x, act, l2, l0 = _with_and_without_head(action_aux=1.0, intent_steps=2)
    with torch.no_grad():
        ctx = m2.context(x[:, :-1])
        head = m2.action_head(ctx.tokens.flatten(1)).view(2, 3, 2, 2)  # (B, positions, k, xy)
        errs = [(head[:, t, k] - norm_action(act[:, t + k])).abs() for t in range(3) for k in range(2) if t + k <= 3]
        torch.testing.assert_close(m2.intent(ctx), denorm_action(m2.action_head(ctx.tokens.flatten(1))).view(-1, 2, 2))
    want = torch.stack(errs).mean()
    torch.testing.assert_close(l2 - l0, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="intent_steps"):
        tiny(intent_steps=2)
