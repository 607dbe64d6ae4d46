"""Hungarian matching of predictions to ground truth (DETR, Carion et al., ECCV 2020; Sparse R-CNN).

Cost = ``w_class · (−p(class)) + w_l1 · L1(normalised xyxy) + w_giou · (−GIoU)`` with EVAD's weights
2 / 5 / 2, solved per image by ``scipy.optimize.linear_sum_assignment``.

Inputs: ``logits (B, P, K+1)`` (softmax over K classes + no-object last), ``boxes (B, P, 4)`` xyxy in
pixels; targets: per image ``labels (M,)``, ``boxes (M, 4)`` pixels, ``size (h, w)``.
Output: per image ``(pred_idx, tgt_idx)`` int64 tensors of equal length ``min(P, M)``.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from .boxes import generalized_box_iou


def box_scale(size: torch.Tensor | tuple) -> torch.Tensor:
    """``(w, h, w, h)`` of an image ``size = (h, w)``, to normalise xyxy boxes to [0, 1]."""
    h, w = (float(s) for s in size)
    return torch.tensor([w, h, w, h])


class HungarianMatcher:
    def __init__(self, cost_class: float = 2.0, cost_l1: float = 5.0, cost_giou: float = 2.0):
        self.cost_class, self.cost_l1, self.cost_giou = cost_class, cost_l1, cost_giou

    def cost_matrix(self, logits, boxes, tgt_labels, tgt_boxes, size) -> torch.Tensor:
        """``(P, M)`` matching cost of one image."""
        scale = box_scale(size).to(boxes)
        prob = logits.softmax(-1)[:, tgt_labels]  # (P, M)
        l1 = torch.cdist(boxes / scale, tgt_boxes / scale, p=1)
        giou = generalized_box_iou(boxes, tgt_boxes)
        return self.cost_class * -prob + self.cost_l1 * l1 + self.cost_giou * -giou

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]):
        out = []
        for b, t in enumerate(targets):
            if len(t["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            c = self.cost_matrix(
                logits[b].float(), boxes[b].float(), t["labels"], t["boxes"].float(), t["size"]
            )
            rows, cols = linear_sum_assignment(c.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
