"""Pictures of what EVAD does: kept vs dropped tokens per frame, and detections drawn on frames.

* :func:`kept_token_mask` — ``(t, h, w)`` bool map of the tokens a pruning encoder kept for a clip.
* :func:`plot_kept_tokens` — one panel per temporal slice (the tubelet's first frame), dropped
  patches dimmed, the keyframe slice outlined; saved as PNG.
* :func:`draw_detections` — boxes with action labels and scores drawn on a ``(H, W, 3)`` uint8 frame.
* :func:`draw_label` — one text label on a filled box (also used by ``kinetix.explain``'s overlays).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


@torch.no_grad()
def kept_token_mask(model, clip: torch.Tensor) -> torch.Tensor:
    """Tokens kept by ``model`` (an EVAD) for ``clip (1, 3, T, H, W)`` → ``(t, h, w)`` bool."""
    _, idx, _, (t, h, w), key = model.forward_features(clip)
    S = h * w
    pos = torch.where(idx[0] < key * S, idx[0], idx[0] + S)  # full time-major index of kept others
    mask = torch.zeros(t * S, dtype=torch.bool)
    mask[pos.cpu()] = True
    mask[key * S : (key + 1) * S] = True  # the keyframe is always kept
    return mask.view(t, h, w)


def plot_kept_tokens(frames: np.ndarray, mask: torch.Tensor, out: str | Path, title: str = "") -> Path:
    """``frames (T, H, W, 3)`` uint8 of the clip (any size: the token grid is scaled to it),
    ``mask (t, h, w)`` from :func:`kept_token_mask` → PNG with one panel per slice (dropped patches
    dimmed, keyframe framed in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, h, w = mask.shape
    T, H, W = frames.shape[:3]
    step = T // t
    # token grid -> frame pixels (nearest): the frames may be the model input or the original video
    shade = torch.nn.functional.interpolate(mask[:, None].float(), size=(H, W), mode="nearest")[:, 0]
    shade = np.where(shade.numpy() > 0, 1.0, 0.25).astype(np.float32)  # (t, H, W)
    fig, axes = plt.subplots(1, t, figsize=(2.2 * t, 2.2 * H / W + 0.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        img = frames[i * step].astype(np.float32)
        ax.imshow((img * shade[i, ..., None]).astype(np.uint8))
        kept = int(mask[i].sum())
        ax.set_title(f"t={i} kept {kept}/{h * w}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == t // 2:
            for s in ax.spines.values():
                s.set_edgecolor("red")
                s.set_linewidth(3)
    fig.suptitle(title or f"kept tokens: {int(mask.sum())}/{mask.numel()} (keyframe in red)", fontsize=9)
    out = Path(out)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def draw_label(draw, x: float, y: float, text: str, colour=(255, 255, 255)) -> None:
    """``text`` on a filled ``colour`` box with its top-left corner at ``(x, y)`` (moved inside the
    image when it would start above it); ``draw``: a ``PIL.ImageDraw.Draw``."""
    tw, th = draw.textbbox((0, 0), text)[2:]
    y = y if y >= 0 else 0
    draw.rectangle([x, y, x + tw + 2, y + th + 1], fill=colour)
    draw.text((x + 1, y), text, fill=(0, 0, 0))


def draw_detections(frame: np.ndarray, boxes, labels: list[str], colour_ids=None) -> np.ndarray:
    """Draw xyxy pixel ``boxes (n, 4)`` with one text label each on ``frame (H, W, 3)`` uint8."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(img)
    for i, (box, text) in enumerate(zip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels)):
        c = _COLOURS[(colour_ids[i] if colour_ids is not None else i) % len(_COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=c, width=2)
        th = draw.textbbox((0, 0), text)[3]
        draw_label(draw, x1, y1 - th - 2 if y1 - th - 2 >= 0 else y1 + 1, text, c)
    return np.asarray(img)
