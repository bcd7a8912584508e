"""Dream videos: the real observation, the current dream and the action trace, side by side.

Layout of one video frame (1152 x 512, both multiples of 16 so H.264 needs no padding):

    +-------------------------------------------------------------------+  title bar (32 px)
    | real observation x4   | dream: predicted frame | action trace over |
    | (384 x 384)           | for this step, x4      | the real frame    |
    +-------------------------------------------------------------------+
    | filmstrip: every predicted frame of the active plan (96 px each)  |
    +-------------------------------------------------------------------+

The trace panel draws, in the 512-px action space: the executed pointer targets of the last
steps (white line), the active plan's upcoming targets (orange dots; committed ones hollow),
the target executed now (red ring when it was a deadline miss, green otherwise).

Frames stream into the encoder as they come (memory stays flat however long the episode), into
a temporary file that replaces the final path only when the video is complete (atomic write).
mp4 (H.264 via imageio-ffmpeg) when ffmpeg works, else an animated gif.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .leapfrog import Plan

SCALE = 4  # 96 px frames -> 384 px panels: big enough for a person to see the T
PANEL = 96 * SCALE
TITLE = 32
STRIP = 96
WIDTH, HEIGHT = 3 * PANEL, TITLE + PANEL + STRIP
TRAIL = 30  # executed targets drawn in the trace


def _up(frame: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(frame, SCALE, axis=0), SCALE, axis=1)  # (384, 384, 3)


class ControlVideo:
    """Write one control episode as a video: `add(...)` per control step, then `close()`."""

    def __init__(self, path: str | os.PathLike, fps: int = 10, title: str = ""):
        self.path = Path(path)
        self.fps = fps
        self.title = title
        self.frames_written = 0
        self._trail: deque[np.ndarray] = deque(maxlen=TRAIL)
        self._font = ImageFont.load_default()
        self._writer = None
        self._tmp: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # -- encoder ----------------------------------------------------------------------------
    def _open(self) -> None:
        import imageio.v2 as imageio

        if self.path.suffix == ".mp4":
            tmp = self.path.with_name(f".{self.path.stem}.partial.mp4")
            try:
                self._writer = imageio.get_writer(tmp, format="FFMPEG", fps=self.fps, codec="libx264",
                                                  quality=7, pixelformat="yuv420p", macro_block_size=16)
                self._tmp = tmp
                return
            except Exception as e:  # no ffmpeg binary / plugin: a gif is still a video
                print(f"dva.video: mp4 unavailable ({e}); writing a gif instead")
                self.path = self.path.with_suffix(".gif")
        tmp = self.path.with_name(f".{self.path.stem}.partial.gif")
        self._writer = imageio.get_writer(tmp, format="GIF", mode="I", duration=1000 / self.fps, loop=0)
        self._tmp = tmp

    def close(self) -> Path:
        """Finish the file and move it into place; returns the final path (mp4 or gif)."""
        if self._writer is None:
            raise RuntimeError(f"{self.path}: no frames were added, nothing to write")
        self._writer.close()
        os.replace(self._tmp, self.path)
        self._writer = None
        return self.path

    def abort(self) -> None:
        """Drop a half-written video (on error): the final path is never a partial file."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
                if self._tmp is not None and self._tmp.exists():
                    self._tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            if self._writer is not None:
                self.close()
        else:
            self.abort()

    # -- composition --------------------------------------------------------------------------
    def add(self, step: int, real: np.ndarray, action: np.ndarray, plan: Plan | None = None,
            miss: bool = False, text: str = "") -> None:
        """One control step: the real frame observed at `step`, the target executed there, and the
        active plan (its predicted frame for `step` is the dream shown)."""
        if real.shape != (96, 96, 3) or real.dtype != np.uint8:
            raise ValueError(f"ControlVideo.add: real frame must be uint8 (96, 96, 3), got {real.dtype} {real.shape}")
        self._trail.append(np.asarray(action, dtype=np.float64))
        frame = self.compose(step, real, action, plan, miss, text)
        if self._writer is None:
            self._open()
        self._writer.append_data(frame)
        self.frames_written += 1

    def compose(self, step, real, action, plan, miss, text) -> np.ndarray:
        canvas = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        canvas[TITLE:TITLE + PANEL, :PANEL] = _up(real)
        dream = plan.frame(step) if plan is not None else None
        if dream is not None:
            canvas[TITLE:TITLE + PANEL, PANEL:2 * PANEL] = _up(dream)
        # trace background: the real frame, dimmed, so targets are seen where they point
        canvas[TITLE:TITLE + PANEL, 2 * PANEL:] = (_up(real).astype(np.uint16) * 2 // 5).astype(np.uint8)
        if plan is not None and plan.frames is not None:
            for j, f in enumerate(plan.frames[: WIDTH // STRIP]):
                canvas[TITLE + PANEL:, j * STRIP:(j + 1) * STRIP] = f

        img = Image.fromarray(canvas)
        d = ImageDraw.Draw(img)
        d.text((8, 10), f"{self.title}  step {step}  {text}", fill=(255, 255, 255), font=self._font)
        for x0, label in ((0, "real"), (PANEL, "dream" if dream is not None else "dream: none for this step"),
                          (2 * PANEL, "action trace")):
            box = d.textbbox((x0 + 6, TITLE + 4), label, font=self._font)
            d.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(0, 0, 0))
            d.text((x0 + 6, TITLE + 4), label, fill=(255, 255, 0), font=self._font)
        if plan is not None and plan.frames is not None and plan.frame(step) is not None:
            j = step - plan.start - 1  # this step's frame in the filmstrip
            if j < WIDTH // STRIP:
                d.rectangle([j * STRIP, TITLE + PANEL, (j + 1) * STRIP - 1, HEIGHT - 1], outline=(255, 255, 0))

        def xy(a):  # 512-px action space -> trace panel pixels
            return (2 * PANEL + float(a[0]) * PANEL / 512.0, TITLE + float(a[1]) * PANEL / 512.0)

        if len(self._trail) > 1:
            d.line([xy(a) for a in self._trail], fill=(255, 255, 255), width=2)
        if plan is not None:
            for s in range(max(step + 1, plan.start), plan.start + plan.horizon):
                x, y = xy(plan.action(s))
                committed = s - plan.start < plan.committed
                d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(255, 160, 0),
                          fill=None if committed else (255, 160, 0))
        x, y = xy(action)
        d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=(255, 40, 40) if miss else (40, 255, 40), width=3)
        return np.asarray(img)
