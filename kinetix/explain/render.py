"""Pictures of explanations: heat maps over frames, flow colouring, PNG grids, overlay videos.

* :func:`colourise` — ``(T, H, W)`` values in [0, 1] -> uint8 RGB through a matplotlib colour map.
* :func:`flow_colours` — ``(T, H, W, 2)`` displacements -> RGB (hue = direction, brightness = length).
* :func:`blend` — heat colours over frames, weighted by the heat (cold regions stay visible).
* :func:`upscale` — nearest-neighbour enlargement so that tiny model inputs stay visible.
* :func:`grid_image` — rows of frames (one row per method / map), a text label per row and the
  frame index above each column; :func:`save_png` writes it.

Text is drawn with :func:`kinetix.detection.visualize.draw_label`, videos are written with
:func:`kinetix.data.io.write_video`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kinetix.detection.visualize import draw_label


def colourise(values: np.ndarray, cmap: str = "turbo") -> np.ndarray:
    """``(...,)`` floats in [0, 1] -> ``(..., 3)`` uint8."""
    import matplotlib

    lut = (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)
    return lut[np.clip(np.rint(values * 255), 0, 255).astype(np.int64)]


def flow_colours(flow: np.ndarray, max_len: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(..., 2)`` ``(dy, dx)`` -> RGB ``(..., 3)`` uint8 (hue = direction, value = length / max)
    and the normalised length ``(...,)`` in [0, 1]."""
    import matplotlib.colors

    dy, dx = flow[..., 0], flow[..., 1]
    length = np.hypot(dy, dx)
    scale = max_len if max_len is not None else float(length.max())
    mag = length / scale if scale > 0 else np.zeros_like(length)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    hsv = np.stack([hue, np.ones_like(hue), np.clip(mag, 0, 1)], -1)
    return (matplotlib.colors.hsv_to_rgb(hsv) * 255).astype(np.uint8), np.clip(mag, 0, 1)


def blend(frames: np.ndarray, colours: np.ndarray, weight: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """``frames (T, H, W, 3)`` uint8, ``colours`` same shape, ``weight (T, H, W)`` in [0, 1]: the
    colours cover a frame in proportion to ``strength * (0.3 + 0.7 weight)``."""
    a = (strength * (0.3 + 0.7 * weight))[..., None]
    return np.clip(frames * (1 - a) + colours * a + 0.5, 0, 255).astype(np.uint8)


def upscale(frames: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Nearest-neighbour enlargement of ``(..., H, W, C)`` by the integer factor that brings the short
    side to at least ``min_side`` (no change when it already is)."""
    f = max(1, -(-min_side // min(frames.shape[-3:-1])))
    return frames if f == 1 else frames.repeat(f, -3).repeat(f, -2)


def label_frames(frames: np.ndarray, text: str) -> np.ndarray:
    """``text`` drawn in the top-left corner of every frame ``(T, H, W, 3)``."""
    from PIL import Image, ImageDraw

    out = []
    for f in frames:
        img = Image.fromarray(np.ascontiguousarray(f))
        draw_label(ImageDraw.Draw(img), 1, 1, text)
        out.append(np.asarray(img))
    return np.stack(out)


def grid_image(rows: list[tuple[str, np.ndarray]], columns: list[str], title: str = "") -> np.ndarray:
    """One row per ``(label, frames (T, H, W, 3))``, one column per frame (``columns``: their
    headers) -> ``(H', W', 3)`` uint8 with a white margin for the texts."""
    from PIL import Image, ImageDraw

    T, H, W = rows[0][1].shape[:3]
    pad, left, top = 4, 150, 16 + (16 if title else 0)
    canvas = Image.new("RGB", (left + T * (W + pad), top + len(rows) * (H + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill=(0, 0, 0))
    for j, c in enumerate(columns):
        draw.text((left + j * (W + pad) + 2, top - 14), c, fill=(0, 0, 0))
    for i, (label, frames) in enumerate(rows):
        y = top + i * (H + pad)
        for line, text in enumerate(_wrap(label, 24)[: max(1, H // 12)]):
            draw.text((4, y + 2 + 12 * line), text, fill=(0, 0, 0))
        for j in range(T):
            canvas.paste(Image.fromarray(np.ascontiguousarray(frames[j])), (left + j * (W + pad), y))
    return np.asarray(canvas)


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return [*lines, cur] if cur else lines


def save_png(image: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    from kinetix.utils.state_dict import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", optimize=True)
    return path
