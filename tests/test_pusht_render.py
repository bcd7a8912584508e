"""The torch renderer against gym-pusht's own pixels (the real env, pygame + cv2)."""
import numpy as np
import pytest
import torch

from dva.pusht import render_frames
from dva.pusht.env import PushTEnv
from dva.pusht.render import LAYERS, T_BAR, T_STEM, WHITE
from dva.pusht.render_check import compare_with_gym

PALETTE = [WHITE] + [c for _, c, _ in LAYERS]


def _states_and_pixels(n_resets: int, n_rollout: int):
    r = compare_with_gym(n_resets, n_rollout)
    return r["states_array"], r["pixels_array"]


def test_tee_geometry_matches_gym_pusht():
    env = PushTEnv(pixels=False)
    shapes = env.gym_env._block_shapes
    assert [tuple(v) for v in shapes[0].get_vertices()] == list(T_BAR)
    assert [tuple(v) for v in shapes[1].get_vertices()] == list(T_STEM)


def test_render_matches_gym_pusht_pixels_on_1000_states():
    r = compare_with_gym(800, 300)
    print(f"renderer vs gym-pusht on {r['states']} states: MAE {r['mae_per_channel'] * 255:.4f}/255, "
          f"{100 * r['within_8_of_255']:.3f}% within 8/255, {100 * r['exact_frames']:.2f}% frames exact")
    assert r["states"] >= 1000
    assert r["mae_per_channel"] <= 1 / 255
    assert r["within_8_of_255"] >= 0.995
    # Frames without contacts must be bit-exact; contacts add pymunk's markers, which a
    # state does not determine.
    assert r["exact_frames_no_contact"] == 1.0


def test_canvas_is_pygame_exact():
    """size=512 gives the pygame canvas itself: identical except pymunk's contact markers."""
    import pygame

    env = PushTEnv(pixels=False)
    for seed in range(12):
        obs, _ = env.reset(seed)
        if seed % 2:  # move so that some canvases have the disc touching the T
            for _ in range(5):
                obs, *_ = env.step(obs["state"][2:4])
        canvas = np.transpose(np.array(pygame.surfarray.pixels3d(env.gym_env._draw())), (1, 0, 2))
        mine = render_frames(torch.from_numpy(obs["state"])[None], 512)[0].numpy()
        diff = (mine != canvas).any(-1)
        # pymunk's anti-aliased contact markers: any colour outside the scene's palette, +-1 px
        known = np.zeros(canvas.shape[:2], bool)
        for c in PALETTE:
            known |= (canvas == c).all(-1)
        foreign = ~known
        for ax in (0, 1):
            foreign = foreign | np.roll(foreign, 1, ax) | np.roll(foreign, -1, ax)
        assert not (diff & ~foreign).any(), f"seed {seed}: {int((diff & ~foreign).sum())} canvas pixels differ"


def test_render_batch_is_independent_and_dtype_agnostic():
    states, _ = _states_and_pixels(16, 0)
    s = torch.from_numpy(states)
    full = render_frames(s)
    one = torch.cat([render_frames(s[i:i + 1]) for i in range(len(s))])
    assert torch.equal(full, one)
    assert torch.equal(render_frames(s.float()), full) or (render_frames(s.float()) != full).float().mean() < 1e-3
    assert render_frames(s[:0]).shape == (0, 96, 96, 3)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        render_frames(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="floating"):
        render_frames(torch.zeros(3, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="size"):
        render_frames(torch.zeros(1, 5), size=600)


@pytest.mark.gpu
def test_render_cuda_matches_cpu():
    states, _ = _states_and_pixels(64, 64)
    s = torch.from_numpy(states)
    assert torch.equal(render_frames(s.cuda()).cpu(), render_frames(s))


def test_other_sizes_match_cv2_resize_of_the_canvas():
    """Sizes whose cv2 weights do not repeat (100) take the direct path, 64 and 96 the table."""
    import cv2
    import pygame

    env = PushTEnv(pixels=False)
    checked = 0
    for seed in range(12):
        obs, _ = env.reset(seed)
        if env.gym_env.n_contact_points:  # contact markers are not a function of the state
            continue
        canvas = np.transpose(np.array(pygame.surfarray.pixels3d(env.gym_env._draw())), (1, 0, 2))
        for size in (100, 64, 96):
            mine = render_frames(torch.from_numpy(obs["state"])[None], size)[0].numpy()
            assert np.array_equal(mine, cv2.resize(canvas, (size, size))), (seed, size)
        checked += 1
    assert checked >= 8
