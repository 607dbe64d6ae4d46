"""Multi-view testing: aggregate the scores of several clips x crops of one video.

A batch of views is ``(B, V, C, T, H, W)``; the model sees ``(B*V, C, T, H, W)`` and its logits
``(B*V, K)`` are folded back to ``(B, V, K)`` and averaged over views, either as logits (``"logits"``)
or as softmax probabilities (``"probs"``). The result is always returned as scores whose argmax is the
prediction: log of the mean probability for ``"probs"`` (so softmax of it is the mean probability).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

AGGREGATIONS = ("logits", "probs")


def aggregate_views(logits: torch.Tensor, how: str = "logits") -> torch.Tensor:
    """``(B, V, K)`` per-view logits -> ``(B, K)`` scores."""
    if how == "logits":
        return logits.mean(dim=1)
    if how == "probs":
        return F.softmax(logits.float(), dim=-1).mean(dim=1).clamp_min(1e-12).log()
    raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {how!r}")


def count_distinct_views(views: torch.Tensor, atol: float = 1e-6) -> int:
    """Number of distinct views in ``(V, ...)`` (exact duplicates up to ``atol`` collapse to one)."""
    flat = views.reshape(views.shape[0], -1).float()  # (V, N)
    distinct: list[torch.Tensor] = []
    for v in flat:
        if not any(torch.allclose(v, d, atol=atol) for d in distinct):
            distinct.append(v)
    return len(distinct)


def check_views(views: torch.Tensor, requested: int | None = None) -> int:
    """Count the distinct views of one sample ``(V, C, T, H, W)`` and warn if some are duplicates
    (a short video repeated into several clips, or crops larger than the frame)."""
    n = count_distinct_views(views)
    if n < views.shape[0]:
        warnings.warn(
            f"only {n} of {views.shape[0]} test views are distinct (duplicates add cost, not accuracy): "
            "the video is too short for that many clips or too small for that many crops",
            stacklevel=2,
        )
    return n


@torch.no_grad()
def predict_views(
    model: nn.Module, views: torch.Tensor, how: str = "logits", reverse_frames: bool = False
) -> torch.Tensor:
    """Scores ``(B, K)`` of ``model`` on a batch of views ``(B, V, C, T, H, W)`` (or ``(B, C, T, H, W)``)."""
    if views.dim() == 5:
        views = views.unsqueeze(1)
    if reverse_frames:
        views = views.flip(3)  # time axis of (B, V, C, T, H, W)
    b, v = views.shape[:2]
    logits = model(views.flatten(0, 1))  # (B*V, K)
    return aggregate_views(logits.reshape(b, v, -1).float(), how)  # (B, V, K) -> (B, K)
