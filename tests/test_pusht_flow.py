"""The true motion field of a pair of PushT states (dva.pusht.flow): it must carry frame t onto
frame t+1 where the bodies are, with the sign of dva.model.unet.warp."""
import torch

from dva.model.frames import from_frames
from dva.model.unet import warp
from dva.pusht import render_frames
from dva.pusht.flow import DISC, STATIC, T_BODY, body_labels, motion_field

S0 = torch.tensor([[100.0, 300.0, 250.0, 260.0, 0.3],
                   [400.0, 100.0, 300.0, 300.0, -1.2],
                   [200.0, 200.0, 180.0, 330.0, 2.0]])
STEP = torch.tensor([[12.0, -7.0, 6.0, -3.0, 0.12],   # disc and T both move, the T turns
                     [-9.0, 4.0, -4.0, 5.0, -0.10],
                     [5.0, 10.0, 3.0, -6.0, 0.15]])


def test_motion_field_warps_frame_t_onto_frame_t1_where_the_bodies_are():
    s1 = S0 + STEP
    f0, f1 = from_frames(render_frames(S0)), from_frames(render_frames(s1))
    d = motion_field(S0, s1)
    assert d.shape == (3, 2, 96, 96) and d.dtype == torch.float32
    on_body = d.norm(dim=1) > 0
    changed = ((f1 - f0).abs().amax(1) > 0.1) & on_body  # body pixels whose colour changed
    for i in range(3):
        copy = (f1 - f0).abs().amax(1)[i][changed[i]].mean()
        moved = (warp(f0, d) - f1).abs().amax(1)[i][changed[i]].mean()
        wrong_way = (warp(f0, -d) - f1).abs().amax(1)[i][changed[i]].mean()
        # measured 0.53-0.66 (copy) vs 0.12-0.15 (warped); the opposite sign is worse than copying
        assert moved < 0.35 * copy, (i, float(moved), float(copy))
        assert wrong_way > copy, (i, float(wrong_way), float(copy))


def test_motion_field_is_zero_off_the_bodies_and_exact_on_the_disc():
    s1 = S0 + STEP
    d = motion_field(S0, s1)
    scale = 96 / 512
    # the disc's pixels all move by the disc's own shift (in output pixels, backwards)
    ax, ay = (s1[0, 0] * scale).long(), (s1[0, 1] * scale).long()
    assert torch.allclose(d[0, :, ay, ax], -STEP[0, :2] * scale, atol=1e-5)
    # a still frame pair: no motion anywhere
    assert motion_field(S0, S0).abs().max() < 1e-4
    # a pixel far from both bodies stays
    assert d[0, :, 2, 90].abs().max() == 0
    # batched leading dims and other sizes
    assert motion_field(S0.view(3, 1, 5), s1.view(3, 1, 5), size=48).shape == (3, 1, 2, 48, 48)


def test_body_labels_are_the_pixels_each_body_is_drawn_on():
    """body_labels says which body each pixel shows: the T's label covers the pixels drawn in the
    T's colours, the disc's those drawn in the disc's (on top of the T), the rest is static."""
    from dva.pusht.validate import t_mask
    from dva.pusht import render as R

    lab = body_labels(S0)
    assert lab.shape == (3, 96, 96) and lab.dtype == torch.int64
    u = render_frames(S0).long()  # (3, 96, 96, 3)
    drawn_t = t_mask(from_frames(render_frames(S0)))
    disc = torch.tensor(R.AGENT)
    drawn_disc = ((u - disc).abs().sum(-1) < 40) | ((u - torch.tensor(R.AGENT_INNER)).abs().sum(-1) < 40)
    for i in range(3):
        t_iou = ((lab[i] == T_BODY) & drawn_t[i]).sum() / ((lab[i] == T_BODY) | drawn_t[i]).sum()
        d_iou = ((lab[i] == DISC) & drawn_disc[i]).sum() / ((lab[i] == DISC) | drawn_disc[i]).sum()
        # measured 0.95-0.96 and 0.79-1.0: anti-aliased edges classify either way
        assert t_iou > 0.92 and d_iou > 0.75, (i, float(t_iou), float(d_iou))
        assert (lab[i] == STATIC).float().mean() > 0.85
    assert body_labels(S0.view(3, 1, 5), size=48).shape == (3, 1, 48, 48)
