"""Anchored dreams (DVAConfig.warp_anchor): the T and disc layers of a dreamed frame sample the
last real frame by their motions composed since it, so a dream resamples a body once, not once
per dreamed step."""
from __future__ import annotations

import math

import pytest
import torch

from dva.model.config import preset
from dva.model.dva import DVA
from dva.model.unet import FLOW_GAIN, compose, warp


def _matrix(m):
    c, s, tx, ty = m.tolist()
    return torch.tensor([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_compose_is_the_product_of_the_motions():
    """compose(first, then) maps p to first(then(p)): the product of the homogeneous matrices."""
    a, b = 0.3, -1.1
    first = torch.tensor([math.cos(a), math.sin(a), 2.5, -4.0], dtype=torch.float64)
    then = torch.tensor([math.cos(b), math.sin(b), -0.75, 1.25], dtype=torch.float64)
    got = _matrix(compose(first, then))
    torch.testing.assert_close(got, _matrix(first) @ _matrix(then), rtol=0, atol=1e-12)
    assert not torch.allclose(got, _matrix(then) @ _matrix(first))  # the order matters
    ident = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(compose(ident, then), then)


def _shifting_model(anchor: bool, shift=(0.3, -0.2)):
    """tiny with body layers, every pixel in layer 1 (a rigid body) moving by `shift` px per
    step, and a zero residual (the decoder's zero-initialised output): each dream is exactly the
    warp of its source."""
    torch.manual_seed(0)
    m = DVA(preset("tiny", warp=True, warp_layers=3, body_masks=0.05, warp_anchor=anchor)).eval()
    with torch.no_grad():
        m.decoder.flow.weight.zero_()
        m.decoder.flow.bias.copy_(torch.tensor(shift) / FLOW_GAIN)
        m.decoder.rigid.mask.weight.zero_()
        m.decoder.rigid.mask.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    return m


@torch.no_grad()
def _dreams(m, real, n):
    cache = m.init_cache(1, "cpu")
    ctx = m.observe(cache, real)
    out = []
    for j in range(n):
        x, ctx = m.dream(cache, ctx, torch.tensor([[256.0, 256.0]]), steps=1,
                         noise=torch.zeros_like(real), observe=j + 1 < n)
        out.append(x)
    return out


def test_anchored_dream_warps_the_real_frame_once_by_the_composed_motion():
    torch.manual_seed(1)
    real = (torch.rand(1, 3, 96, 96) * 2 - 1).clamp(-0.9, 0.9)
    real = torch.nn.functional.avg_pool2d(real, 5, 1, 2)  # smooth: sub-pixel warps move it, not alias it
    n, (sx, sy) = 4, (0.3, -0.2)
    anchored, compound = _dreams(_shifting_model(True), real, n), _dreams(_shifting_model(False), real, n)
    once = warp(real, torch.tensor([n * sx, n * sy]).view(1, 2, 1, 1).expand(1, 2, 96, 96))
    twice = real
    for _ in range(n):
        twice = warp(twice, torch.tensor([sx, sy]).view(1, 2, 1, 1).expand(1, 2, 96, 96))
    torch.testing.assert_close(anchored[-1], once, rtol=0, atol=1e-4)
    torch.testing.assert_close(compound[-1], twice, rtol=0, atol=1e-4)
    assert (once - twice).abs().max() > 0.01  # the two are told apart
    torch.testing.assert_close(anchored[0], compound[0])  # from a real frame both are one warp


def test_dream_without_anchor_is_sample_then_observe():
    """dream() is what the planner and validation call per predicted frame: without warp_anchor
    (every checkpoint before it) it is exactly sample() followed by observe()."""
    m = _shifting_model(False)
    x0 = torch.rand(1, 3, 96, 96) * 2 - 1
    a = torch.tensor([[100.0, 400.0]])
    noise = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c1, c2 = m.init_cache(1, "cpu"), m.init_cache(1, "cpu")
        x1, ctx1 = m.dream(c1, m.observe(c1, x0), a, steps=2, noise=noise)
        ref = m.sample(m.observe(c2, x0), a, steps=2, noise=noise)
        ctx2 = m.observe(c2, ref)
    torch.testing.assert_close(x1, ref, rtol=0, atol=0)
    torch.testing.assert_close(ctx1.tokens, ctx2.tokens, rtol=0, atol=0)
    assert ctx1.anchor is None and ctx1.motion is None


def test_warp_anchor_needs_body_layers():
    with pytest.raises(ValueError, match="warp_anchor needs body_masks"):
        preset("tiny", warp=True, warp_layers=3, warp_anchor=True)


def test_self_forcing_rolls_out_anchored_dreams_as_dream_does():
    """With warp_anchor, self forcing (the training-time rollout) must make the dreams dream()
    makes at inference: a run of <= depth swapped frames equals the cached rollout (with a real
    residual, varied masks and motions), and differs from the unanchored one."""
    K, T = 3, 5

    def model(anchor):
        torch.manual_seed(0)
        m = DVA(preset("tiny", warp=True, warp_layers=3, body_masks=0.05, warp_anchor=anchor,
                       self_forcing=1.0, self_forcing_depth=K))
        with torch.no_grad():
            for w in (m.decoder.flow.weight, m.decoder.rigid.mask.weight, m.decoder.out.weight):
                w.normal_(0, 0.05)
        return m

    x = torch.nn.functional.avg_pool2d(torch.rand(2 * T, 3, 96, 96) * 2 - 1, 5, 1, 2).view(2, T, 3, 96, 96)
    act = torch.rand(2, T, 2) * 512
    noise = torch.randn((2 * (T - 1), 3, 96, 96), generator=torch.Generator().manual_seed(5)).view(2, T - 1, 3, 96, 96)
    out = {}
    for anchor in (True, False):
        m = model(anchor)
        with torch.no_grad():
            seen, anc = m._self_force(x, act, generator=torch.Generator().manual_seed(5))
            cache = m.init_cache(2, "cpu")
            ctx, dreams = m.observe(cache, x[:, 0]), [x[:, 0]]
            for i in range(1, T):
                nxt, ctx = m.dream(cache, ctx, act[:, i - 1], steps=1, noise=noise[:, i - 1])
                dreams.append(nxt)
        dreams = torch.stack(dreams, 1)
        torch.testing.assert_close(seen[:, :K + 1], dreams[:, :K + 1], rtol=0, atol=1e-4)
        assert (anc is not None) == anchor
        out[anchor] = seen
    torch.testing.assert_close(out[True][:, 1], out[False][:, 1])  # from the real frame: the same
    assert (out[True][:, K] - out[False][:, K]).abs().amax() > 1e-3
    # and the training loss runs through the anchored contexts, with gradients for the warp head
    m = model(True).train()
    states = torch.rand(2, T, 5) * torch.tensor([512.0, 512.0, 512.0, 512.0, 2 * math.pi])
    from dva.train import simulator_targets

    m(x, act, generator=torch.Generator().manual_seed(2), **simulator_targets(states, m.cfg)).backward()
    assert m.decoder.flow.weight.grad.abs().sum() > 0 and m.decoder.rigid.mask.weight.grad.abs().sum() > 0


def test_packaged_model_dreams_anchored_to_the_last_real_frame():
    """The checkpoint that ships (what `python -m dva.control` loads) has anchored dreams on, and
    a dream carries the real frame as its anchor: the T and disc of dream step 2 come from the
    real frame, so switching the anchor off changes that frame (but not dream step 1)."""
    from dva.checkpoint import load
    from dva.pusht import render_frames

    model, idm, _ = load()
    assert model.cfg.warp_anchor and model.cfg.body_masks > 0 and idm is not None
    real = model.from_frames(render_frames(torch.tensor([[300.0, 200.0, 256.0, 300.0, 0.6]])))
    a = torch.tensor([[330.0, 230.0]])
    noise = torch.randn(2, 1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    dreams = {}
    for on in (True, False):
        model.cfg.warp_anchor = on
        with torch.no_grad():
            cache = model.init_cache(1, "cpu")
            ctx = model.observe(cache, real)
            x1, ctx = model.dream(cache, ctx, a, noise=noise[0])
            x2, _ = model.dream(cache, ctx, a, noise=noise[1], observe=False)
        if on:
            assert ctx.anchor is not None and torch.equal(ctx.anchor, real) and ctx.motion.shape == (1, 2, 4)
        else:
            assert ctx.anchor is None
        dreams[on] = (x1, x2)
    torch.testing.assert_close(dreams[True][0], dreams[False][0], rtol=0, atol=0)
    assert (dreams[True][1] - dreams[False][1]).abs().max() > 1e-3
