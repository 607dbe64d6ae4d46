"""Frame sampling: pure functions from a video length to 0-based frame indices.

Every function returns ``np.ndarray[int64]``: ``(num_frames,)`` for one clip, ``(num_clips, num_frames)``
for several (TSM's twice-sampling, multi-view testing). Random ones take ``rng`` (a
``np.random.Generator``; a fresh unseeded one when None).

- ``segment_indices``: TSN/TSM segment sampling (Wang et al., "Temporal Segment Networks", ECCV 2016;
  Lin et al., "TSM", ICCV 2019, ``ops/dataset.py``), with the official formulas shifted from 1-based
  to 0-based frame numbers (``new_length = 1``): train draws one random frame in each of ``T`` equal
  segments, test takes segment centres ``int(tick / 2 + tick * x)``, twice adds the starts ``int(tick * x)``.
- ``dense_indices``: ``T`` consecutive frames ``interval`` apart (16x4, 8x8, 8x32; TSM's dense sampling
  of a ``T * interval`` window).
- ``uniform_indices``: ``T`` evenly spaced frames over the whole video.
- ``multiview_indices``: all temporal test views at once.
- ``test_clip_indices``: the temporal test views every evaluation path uses (TSM's two-clip
  protocol for 2 segment clips, ``multiview_indices`` otherwise).
- ``keyframe_indices``: a clip centred on a keyframe (AVA: 16 frames 4 apart around the keyframe).

Short videos never fail, and each family keeps the behaviour of its reference code:

- segment / uniform sampling **stretch**: with fewer frames than ``T``, frames repeat in order
  (the official TSN code returns ``T`` copies of frame 0 there; kinetix keeps the test formula
  ``int(tick / 2 + tick * x)`` with ``tick < 1`` and a sorted random draw for training, which cover
  the whole video);
- dense sampling **loops**: indices wrap modulo the video length (``(start + i * interval) % n``, as in
  TSM's dense sampler);
- keyframe clips **clamp** to the first / last frame (as AVA loaders pad with edge frames).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "dense_indices",
    "keyframe_indices",
    "multiview_indices",
    "segment_indices",
    "test_clip_indices",
    "uniform_indices",
]


def _check(video_frames: int, num_frames: int) -> None:
    if video_frames < 1:
        raise ValueError(f"video_frames must be >= 1, got {video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng() if rng is None else rng


def segment_indices(
    video_frames: int,
    num_frames: int,
    mode: Literal["train", "test", "twice"] = "train",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """TSN segment sampling of ``num_frames`` frames from a ``video_frames``-frame video.

    Returns ``(num_frames,)`` for ``train`` / ``test`` and ``(2, num_frames)`` for ``twice``
    (row 0: segment centres, row 1: segment starts).
    """
    _check(video_frames, num_frames)
    x = np.arange(num_frames)
    if mode == "train":
        avg = video_frames // num_frames  # segment length (official: num_frames - new_length + 1)
        if avg > 0:
            return x * avg + _rng(rng).integers(avg, size=num_frames)
        return np.sort(_rng(rng).integers(video_frames, size=num_frames))  # shorter than T: stretch
    tick = video_frames / num_frames
    centres = (tick / 2.0 + tick * x).astype(np.int64)  # int() truncation, as the official code
    if mode == "test":
        return centres
    if mode == "twice":
        return np.stack([centres, (tick * x).astype(np.int64)])  # (2, T)
    raise ValueError(f"mode must be 'train', 'test' or 'twice', got {mode!r}")


def dense_indices(
    video_frames: int,
    num_frames: int,
    interval: int,
    mode: Literal["train", "test"] = "train",
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``num_frames`` frames ``interval`` apart, from a window of ``num_frames * interval`` frames (TSM).

    train: one clip with a random start in ``[0, video_frames - num_frames * interval]`` (TSM draws
    from ``[0, video_frames - num_frames * interval)``, never the last start; kinetix includes it).
    test: ``num_clips`` starts evenly spaced over that range (``np.linspace(..., dtype=int)`` as TSM's
    dense test), the centre start when ``num_clips == 1``. Indices past the end wrap around (loop).

    Returns ``(num_frames,)`` when ``num_clips == 1``, else ``(num_clips, num_frames)``.
    """
    _check(video_frames, num_frames)
    if interval < 1 or num_clips < 1:
        raise ValueError(f"interval and num_clips must be >= 1, got {interval}, {num_clips}")
    last_start = max(0, video_frames - num_frames * interval)  # official: sample_pos - 1
    if mode == "train":
        starts = _rng(rng).integers(last_start + 1, size=num_clips)
    elif mode == "test":
        starts = (
            np.array([last_start // 2])
            if num_clips == 1
            else np.linspace(0, last_start, num=num_clips).astype(np.int64)
        )
    else:
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    idx = (starts[:, None] + np.arange(num_frames) * interval) % video_frames  # (num_clips, T), loop
    return idx[0] if num_clips == 1 else idx


def uniform_indices(video_frames: int, num_frames: int) -> np.ndarray:
    """``num_frames`` evenly spaced frames from first to last (truncated ``linspace``, as pytorchvideo)."""
    _check(video_frames, num_frames)
    return np.linspace(0, video_frames - 1, num_frames).astype(np.int64)


def multiview_indices(
    video_frames: int,
    num_frames: int,
    num_clips: int,
    sampling: Literal["segment", "dense"] = "segment",
    interval: int = 1,
) -> np.ndarray:
    """All ``num_clips`` temporal test views at once -> ``(num_clips, num_frames)``.

    segment: clip ``c`` takes frame ``int(tick * x + tick * (c + 0.5) / num_clips)`` of segment ``x``
    (offsets evenly spread inside each segment; ``num_clips == 1`` gives the TSN centres).
    dense: ``dense_indices(..., mode="test", num_clips=num_clips)``.
    """
    _check(video_frames, num_frames)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if sampling == "segment":
        tick = video_frames / num_frames
        offset = tick * (np.arange(num_clips) + 0.5) / num_clips  # (num_clips,)
        return (tick * np.arange(num_frames)[None, :] + offset[:, None]).astype(np.int64)  # (num_clips, T)
    if sampling == "dense":
        return dense_indices(video_frames, num_frames, interval, "test", num_clips).reshape(num_clips, -1)
    raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")


def test_clip_indices(
    video_frames: int,
    num_frames: int,
    num_clips: int,
    sampling: Literal["segment", "dense"] = "segment",
    interval: int = 1,
) -> np.ndarray:
    """The ``(num_clips, num_frames)`` temporal test views of a ``video_frames``-frame video.

    Segment sampling with 2 clips is TSM's "twice" protocol (segment centres, then segment starts,
    ``segment_indices(..., "twice")``); every other case is :func:`multiview_indices`. The dataset,
    ``kinetix test`` and ``kinetix predict`` all sample test clips through this function.
    """
    if sampling == "segment" and num_clips == 2:
        return segment_indices(video_frames, num_frames, "twice")
    return multiview_indices(video_frames, num_frames, num_clips, sampling, interval)


def keyframe_indices(center_frame: int, num_frames: int, interval: int, video_frames: int) -> np.ndarray:
    """Clip centred on ``center_frame``: ``center + (arange(T) - T // 2) * interval``, clamped to the video."""
    _check(video_frames, num_frames)
    idx = center_frame + (np.arange(num_frames) - num_frames // 2) * interval
    return np.clip(idx, 0, video_frames - 1)
