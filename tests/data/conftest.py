"""Shared fixtures for the data tests: small real videos written with PyAV (never mocked readers).

``make_video(name, num_frames=..., size=(H, W), fps=..., **write_video_kwargs) -> Path`` writes a
video whose frames all differ (a moving square over a gradient, see ``pattern_frames``), so an
off-by-one frame shows up. ``decode_all(path)`` is the reference: a plain sequential PyAV decode of
every frame to RGB, which the readers must match exactly.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from kinetix.data.io import write_video


def pattern_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): gradient background + a square moving one step per frame + a frame code."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:height, 0:width]  # (H, W)
    bg = (base[None, None, :] + 2 * yy[..., None] + 3 * xx[..., None]) % 200  # (H, W, 3)
    frames = np.broadcast_to(bg, (num_frames, height, width, 3)).astype(np.uint8).copy()  # (T, H, W, 3)
    side = max(4, min(height, width) // 4)
    t = np.arange(num_frames)
    x0 = (t * 3) % (width - side)
    y0 = (t * 2) % (height - side)
    for i in range(num_frames):  # test data only
        frames[i, y0[i] : y0[i] + side, x0[i] : x0[i] + side] = (255, 255 - (i * 7) % 256, (i * 13) % 256)
    frames[:, :2, :, 1] = (t[:, None, None] * 5 % 256).astype(np.uint8)  # frame code along the top rows
    return frames


def _decode_all(path: str | Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture
def make_video(tmp_path):
    def make(
        name: str = "video.mp4",
        num_frames: int = 48,
        size: tuple[int, int] = (48, 64),
        fps: float = 25.0,
        seed: int = 0,
        **kwargs,
    ) -> Path:
        frames = pattern_frames(num_frames, *size, seed=seed)
        return write_video(tmp_path / name, frames, fps=fps, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory) -> Path:
    """72 frames, 48x64, 25 fps, H.264 with B-frames and a keyframe every 12 frames."""
    frames = pattern_frames(72, 48, 64)
    return write_video(tmp_path_factory.mktemp("video") / "tiny.mp4", frames, fps=25, gop=12)


@pytest.fixture(name="pattern_frames")
def pattern_frames_fixture():
    """The frame pattern that ``make_video`` encodes, to compare decoded pixels with the source."""
    return pattern_frames


@pytest.fixture
def decode_all():
    """Reference decoder: every frame, in order, as uint8 RGB (T, H, W, 3)."""
    return _decode_all


@pytest.fixture
def make_frame_folder(tmp_path):
    def make(
        name: str = "frames",
        num_frames: int = 10,
        size: tuple[int, int] = (24, 32),
        template: str = "img_{:05d}.jpg",
        start_index: int = 1,
    ) -> tuple[Path, np.ndarray]:
        from PIL import Image

        folder = tmp_path / name
        folder.mkdir()
        frames = pattern_frames(num_frames, *size)
        for i, f in enumerate(frames):
            Image.fromarray(f).save(folder / template.format(start_index + i))
        return folder, frames

    return make
