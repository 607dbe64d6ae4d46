"""Box operations in pure PyTorch (no torchvision): conversions, area, IoU, GIoU, deltas, clipping.

Boxes are ``(..., 4)`` tensors, ``x1, y1, x2, y2`` unless the name says ``cxcywh``. Pairwise
functions take ``(N, 4)`` and ``(M, 4)`` and return ``(N, M)``. GIoU follows Rezatofighi et al.,
CVPR 2019; the delta parameterisation follows R-CNN / Sparse R-CNN (Sun et al., CVPR 2021) with
weights ``(2, 2, 1, 1)`` and the exp clamp ``log(1e5 / 16)`` as in EVAD's head.
"""

from __future__ import annotations

import math

import torch

DELTA_CLAMP = math.log(100000.0 / 16)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def box_area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lt = torch.max(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(N, M)``; 0 where the union is empty."""
    inter, union = _inter_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU ``(N, M)`` in [-1, 1]: IoU − (hull − union) / hull."""
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=1e-12)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-12)


def encode_deltas(
    src: torch.Tensor, dst: torch.Tensor, weights: tuple[float, ...] = (2.0, 2.0, 1.0, 1.0)
) -> torch.Tensor:
    """Deltas ``(dx, dy, dw, dh)`` turning ``src`` boxes into ``dst`` boxes (both ``(..., 4)`` xyxy)."""
    wx, wy, ww, wh = weights
    s, d = xyxy_to_cxcywh(src), xyxy_to_cxcywh(dst)
    return torch.stack(
        [
            wx * (d[..., 0] - s[..., 0]) / s[..., 2],
            wy * (d[..., 1] - s[..., 1]) / s[..., 3],
            ww * torch.log(d[..., 2] / s[..., 2]),
            wh * torch.log(d[..., 3] / s[..., 3]),
        ],
        -1,
    )


def decode_deltas(
    deltas: torch.Tensor,
    boxes: torch.Tensor,
    weights: tuple[float, ...] = (2.0, 2.0, 1.0, 1.0),
    clamp: float = DELTA_CLAMP,
) -> torch.Tensor:
    """Apply ``deltas (..., 4)`` to xyxy ``boxes (..., 4)``; dw/dh clamped at ``clamp`` before exp."""
    wx, wy, ww, wh = weights
    c = xyxy_to_cxcywh(boxes)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw, dh = (deltas[..., 2] / ww).clamp(max=clamp), (deltas[..., 3] / wh).clamp(max=clamp)
    cx, cy = dx * c[..., 2] + c[..., 0], dy * c[..., 3] + c[..., 1]
    w, h = torch.exp(dw) * c[..., 2], torch.exp(dh) * c[..., 3]
    return cxcywh_to_xyxy(torch.stack([cx, cy, w, h], -1))


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Clip xyxy boxes to the image ``[0, width] × [0, height]``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], -1)


def extend_boxes(
    boxes: torch.Tensor, ratio: tuple[float, float], height: float, width: float
) -> torch.Tensor:
    """EVAD's RoI extension, as the official ``EVADRoIHead.bbox_extension``: widen by ``ratio[0]·w``
    and heighten by ``ratio[1]·h`` (half on each side) with the inclusive pixel size
    ``w = x2 − x1 + 1``, ``h = y2 − y1 + 1``, then clip to the pixel centres
    ``[0, width − 1] × [0, height − 1]`` (SlowFast's ``clip_boxes_tensor``). ``(0.4, 0.2)`` pads
    0.2w left/right and 0.1h top/bottom. Give it the predicted boxes unclipped, as the official head."""
    w, h = boxes[..., 2] - boxes[..., 0] + 1, boxes[..., 3] - boxes[..., 1] + 1
    pad = torch.stack([-ratio[0] * w, -ratio[1] * h, ratio[0] * w, ratio[1] * h], -1) / 2
    return clip_boxes(boxes + pad, height - 1, width - 1)
