"""Test views: the one path from (video, data settings) to the clips a model is scored on.

:class:`DataSettings` is what the data pipeline needs from a model (frames, input size,
normalisation, sampling, test views); the engine derives it from the model's ``PretrainedCfg`` and
the config. :func:`load_test_views` turns a video file into its ``(V, C, T, H, W)`` test views,
``V = clips x crops``, clip-major: decode at :func:`decode_short_side`, temporal views from
:func:`~kinetix.data.sampling.test_clip_indices`, spatial crops from :func:`test_view_transform`,
one transform call per clip (:func:`clip_views`). ``VideoClassificationDataset`` in test mode uses
the same three functions, so ``kinetix test``, ``kinetix predict`` and every other caller score the
same frames.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .io import open_video
from .sampling import test_clip_indices
from .transforms import Compose, test_transform


@dataclass(frozen=True)
class DataSettings:
    """What the data pipeline needs from the model (plus explicit config overrides)."""

    num_frames: int
    input_size: int
    mean: tuple
    std: tuple
    channel_order: str
    value_range: float
    sampling: str
    frame_interval: int
    test_views: tuple[int, int]  # (temporal clips, spatial crops)
    test_resize: int | None

    def with_views(self, views) -> DataSettings:
        return replace(self, test_views=(int(views[0]), int(views[1])))


def decode_short_side(settings: DataSettings) -> int:
    """Short side test frames are decoded at: ``test_resize``, else ``input_size * 256 // 224``."""
    return settings.test_resize or settings.input_size * 256 // 224


def test_view_transform(settings: DataSettings, crops: int | None = None) -> Compose:
    """Resize, ``crops`` spatial crops (default: the settings' test crops) and normalise."""
    return test_transform(
        settings.input_size,
        settings.mean,
        settings.std,
        settings.channel_order,
        settings.value_range,
        resize=decode_short_side(settings),
        crops=settings.test_views[1] if crops is None else crops,
    )


test_view_transform.__test__ = False  # not a pytest test when imported into test modules


def clip_views(frames: torch.Tensor, transform, target: dict | None = None, generator=None):
    """Apply ``transform`` to each clip of ``frames`` ``(clips, T, H, W, 3)`` uint8.

    Returns ``(video, target)``: ``video`` is ``(C, T, h, w)`` for one clip and one crop, else
    ``(V, C, T, h, w)`` with ``V = clips x crops`` (clip-major); ``target`` is the first clip's
    (a direction-aware flip may swap its label)."""
    views, first = [], target
    for c in range(frames.shape[0]):  # loop over clips (not frames); each clip draws its params
        clip, t = transform(frames[c], dict(target or {}), generator)
        views.append(clip)
        if c == 0:
            first = t
    video = views[0] if len(views) == 1 else torch.stack(views)
    if video.ndim == 6:  # (clips, crops, C, T, H, W) -> (V, C, T, H, W)
        video = video.flatten(0, 1)
    return video, first


def load_test_views(video: str | Path, settings: DataSettings) -> torch.Tensor:
    """All test views of one video file or frame folder: float ``(V, C, T, H, W)``."""
    clips = settings.test_views[0]
    with open_video(video, short_side=decode_short_side(settings)) as reader:
        idx = test_clip_indices(
            reader.num_frames, settings.num_frames, clips, settings.sampling, settings.frame_interval
        )  # (clips, T)
        frames = reader.get_frames(idx.reshape(-1))  # (clips * T, H, W, 3)
    frames = frames.view(clips, settings.num_frames, *frames.shape[1:])  # (clips, T, H, W, 3)
    video, _ = clip_views(frames, test_view_transform(settings))
    return video if video.ndim == 5 else video[None]  # (V, C, T, H, W)
