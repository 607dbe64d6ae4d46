"""EVAD's training losses (Chen et al., ICCV 2023; set prediction as in Sparse R-CNN / DETR).

Actor localisation, for **every** Sparse R-CNN stage (deep supervision), each stage matched anew:
softmax CE over (person, no-object) with the no-object class weighted 0.1, L1 on boxes normalised
by the image size, and 1 − GIoU; weights 2 / 5 / 2, box terms divided by the number of targets.
Action classification: sigmoid BCE on the proposals matched at the last stage, for **every**
context-refinement decoder layer, weighted by ``action_weight`` (12 for ViT-B, 6 for ViT-L).

Targets per image: ``boxes (M, 4)`` xyxy pixels, ``labels (M,)`` (0 = person), ``actions (M, A)``
multi-hot, ``size (h, w)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .boxes import generalized_box_iou
from .matcher import HungarianMatcher, box_scale


class DetectionCriterion:
    def __init__(
        self,
        num_classes: int = 1,
        weight_class: float = 2.0,
        weight_l1: float = 5.0,
        weight_giou: float = 2.0,
        no_object_weight: float = 0.1,
        action_weight: float = 12.0,
    ):
        self.matcher = HungarianMatcher(weight_class, weight_l1, weight_giou)
        self.num_classes = num_classes
        self.weight_class, self.weight_l1, self.weight_giou = weight_class, weight_l1, weight_giou
        self.class_weight = torch.ones(num_classes + 1)
        self.class_weight[-1] = no_object_weight
        self.action_weight = action_weight

    def box_losses(self, logits, boxes, targets, indices, num_boxes: float) -> dict[str, torch.Tensor]:
        """CE / L1 / GIoU of one stage: ``logits (B, P, K+1)``, ``boxes (B, P, 4)``."""
        B, P, _ = logits.shape
        tgt_cls = torch.full((B, P), self.num_classes, dtype=torch.int64, device=logits.device)
        batch = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(logits.device)
        src = torch.cat([s for s, _ in indices]).to(logits.device)
        tgt_cls[batch, src] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(
            logits.device
        )
        ce = F.cross_entropy(logits.flatten(0, 1), tgt_cls.flatten(), self.class_weight.to(logits))
        pred = boxes[batch, src]  # (n_matched, 4)
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(pred)
        scale = torch.cat([box_scale(t["size"]).expand(len(j), 4) for t, (_, j) in zip(targets, indices)]).to(
            pred
        )
        l1 = (pred / scale - tgt / scale).abs().sum() / num_boxes
        giou = (1 - torch.diag(generalized_box_iou(pred, tgt))).sum() / num_boxes
        return {"loss_ce": ce, "loss_l1": l1, "loss_giou": giou}

    def __call__(
        self,
        stage_logits: list[torch.Tensor],
        stage_boxes: list[torch.Tensor],
        action_logits: list[torch.Tensor],
        targets: list[dict],
    ) -> dict[str, torch.Tensor]:
        """Total ``loss`` plus its parts (summed over stages / decoder layers)."""
        num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        parts = {"loss_ce": 0.0, "loss_l1": 0.0, "loss_giou": 0.0}
        for logits, boxes in zip(stage_logits, stage_boxes):
            indices = self.matcher(logits.detach(), boxes.detach(), targets)
            for k, v in self.box_losses(logits, boxes, targets, indices, num_boxes).items():
                parts[k] = parts[k] + v
        # action targets on the last stage's matches
        batch = torch.cat([torch.full_like(s, b) for b, (s, _) in enumerate(indices)])
        src = torch.cat([s for s, _ in indices])
        act_tgt = torch.cat([t["actions"][j] for t, (_, j) in zip(targets, indices)]).float()
        loss_action = sum(
            F.binary_cross_entropy_with_logits(a[batch, src], act_tgt.to(a)) if len(src) else a.sum() * 0
            for a in action_logits
        )
        parts["loss_action"] = loss_action
        loss = (
            self.weight_class * parts["loss_ce"]
            + self.weight_l1 * parts["loss_l1"]
            + self.weight_giou * parts["loss_giou"]
            + self.action_weight * loss_action
        )
        return {"loss": loss, **parts}
