"""FPN over ViT keyframe maps and the Sparse R-CNN actor-localisation head of EVAD.

* FPN (Lin et al., CVPR 2017; Detectron2 layout, names ``fpn_lateral{2..5}``/``fpn_output{2..5}``):
  four ``(B, C, h, w)`` keyframe maps, resized ×4, ×2, ×1, ×0.5 (nearest) to strides 4…32, 1×1
  lateral + 3×3 output convs, top-down nearest ×2 with sum; p6 = max-pool(p5, 1, stride 2).
  The 1×1 lateral conv commutes with nearest upsampling, so it runs before the resize (exact, and
  16× cheaper at p2).
* Sparse R-CNN (Sun et al., CVPR 2021): ``num_proposals`` learnable boxes (whole image at init) and
  features; ``num_stages`` stages of RoIAlign on p2–p5 → self-attention over proposals →
  DynamicConv (proposal-conditioned 1×1 convs) → FFN → class / box-delta branches; each stage
  refines the previous stage's (detached) boxes.

Shapes: ``SparseRCNN(features [p2..p5], image_size (H, W))`` → per stage ``logits (B, P, 2)``
(person, no-object) and ``boxes (B, P, 4)`` xyxy pixels, plus the last proposal features.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.layers.roi_align import roi_align

from .boxes import box_area, cxcywh_to_xyxy, decode_deltas


class FPN(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 256, scales=(4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        self.scales = scales
        for lvl in range(2, 2 + len(scales)):
            self.add_module(f"fpn_lateral{lvl}", nn.Conv2d(in_dim, out_dim, 1))
            self.add_module(f"fpn_output{lvl}", nn.Conv2d(out_dim, out_dim, 3, padding=1))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Four ``(B, C, h, w)`` maps → ``[p2, p3, p4, p5, p6]`` of ``(B, out_dim, h·s, w·s)``."""
        lat = []
        for lvl, (x, s) in enumerate(zip(maps, self.scales), 2):
            y = getattr(self, f"fpn_lateral{lvl}")(
                x if s >= 1 else F.interpolate(x, scale_factor=s, mode="nearest")
            )
            lat.append(F.interpolate(y, scale_factor=s, mode="nearest") if s > 1 else y)
        outs, top = [], None
        for lvl in range(len(lat) + 1, 1, -1):  # 5, 4, 3, 2
            x = lat[lvl - 2]
            top = x if top is None else x + F.interpolate(top, size=x.shape[-2:], mode="nearest")
            outs.insert(0, getattr(self, f"fpn_output{lvl}")(top))
        return [*outs, F.max_pool2d(outs[-1], 1, 2)]


def multiscale_roi_align(
    features: list[torch.Tensor], boxes: torch.Tensor, output_size: int = 7, sampling_ratio: int = 2
) -> torch.Tensor:
    """Detectron2's ROIPooler over p2–p5: each box is pooled from level
    ``clamp(floor(4 + log2(sqrt(area) / 224)), 2, 5)``. ``boxes (B, P, 4)`` → ``(B, P, C, 7, 7)``.

    Each level present is pooled for every box (one grid_sample, no loop over boxes) and the boxes of
    that level selected; levels no box maps to are skipped."""
    level = torch.floor(4 + torch.log2(box_area(boxes).clamp(min=1e-8).sqrt() / 224 + 1e-8)).clamp(2, 5) - 2
    out = None
    # on the meta device (GMAC counting) values are unknown: pool every level (grid_sample is not counted)
    levels = range(len(features)) if boxes.is_meta else level.unique().tolist()
    for i in levels:  # at most 4 levels
        i = int(i)
        pooled = roi_align(
            features[i], boxes, output_size, 1.0 / 2 ** (i + 2), sampling_ratio
        )  # (B, P, C, 7, 7)
        sel = (level == i)[..., None, None, None].to(pooled.dtype)
        out = pooled * sel if out is None else out + pooled * sel
    return out


class DynamicConv(nn.Module):
    """Proposal-conditioned ``C → dim_dynamic → C`` 1×1 convs on the 7×7 RoI features."""

    def __init__(self, dim: int = 256, dim_dynamic: int = 64, pooler_size: int = 7):
        super().__init__()
        self.dim, self.dim_dynamic = dim, dim_dynamic
        self.dynamic_layer = nn.Linear(dim, 2 * dim * dim_dynamic)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(dim)
        self.out_layer = nn.Linear(dim * pooler_size**2, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, pro: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """``pro (n, C)``, ``roi (n, 49, C)`` → ``(n, C)``."""
        params = self.dynamic_layer(pro)  # (n, 2·C·Dd)
        p1 = params[:, : self.dim * self.dim_dynamic].view(-1, self.dim, self.dim_dynamic)
        p2 = params[:, self.dim * self.dim_dynamic :].view(-1, self.dim_dynamic, self.dim)
        x = F.relu(self.norm1(torch.bmm(roi, p1)))  # (n, 49, Dd)
        x = F.relu(self.norm2(torch.bmm(x, p2)))  # (n, 49, C)
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))


def _branch(dim: int, n: int) -> nn.ModuleList:
    layers = []
    for _ in range(n):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class RCNNHead(nn.Module):
    """One Sparse R-CNN stage."""

    def __init__(self, dim: int = 256, num_classes: int = 1, num_heads: int = 8, ffn_dim: int = 2048):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.inst_interact = DynamicConv(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.cls_module = _branch(dim, 1)
        self.reg_module = _branch(dim, 3)
        self.class_logits = nn.Linear(dim, num_classes + 1)
        self.bboxes_delta = nn.Linear(dim, 4)

    def forward(self, features, boxes, pro):
        """``boxes (B, P, 4)``, ``pro (B, P, C)`` → ``logits (B, P, K+1)``, new boxes, new ``pro``."""
        B, P, C = pro.shape
        roi = multiscale_roi_align(features, boxes)  # (B, P, C, 7, 7)
        roi = roi.flatten(3).transpose(2, 3).reshape(B * P, -1, C)  # (B·P, 49, C)
        pro = self.norm1(pro + self.self_attn(pro, pro, pro, need_weights=False)[0])
        pro = self.norm2(pro + self.inst_interact(pro.reshape(B * P, C), roi).view(B, P, C))
        pro = self.norm3(pro + self.linear2(F.relu(self.linear1(pro))))
        cls, reg = pro, pro
        for layer in self.cls_module:
            cls = layer(cls)
        for layer in self.reg_module:
            reg = layer(reg)
        boxes = decode_deltas(self.bboxes_delta(reg), boxes)
        return self.class_logits(cls), boxes, pro


class SparseRCNN(nn.Module):
    def __init__(
        self, dim: int = 256, num_proposals: int = 100, num_stages: int = 6, num_classes: int = 1, **kw
    ):
        super().__init__()
        self.init_proposal_features = nn.Embedding(num_proposals, dim)
        self.init_proposal_boxes = nn.Embedding(num_proposals, 4)
        self.head_series = nn.ModuleList(RCNNHead(dim, num_classes, **kw) for _ in range(num_stages))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.head_series.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.init_proposal_boxes.weight[:, :2], 0.5)  # (cx, cy, w, h) = whole image
        nn.init.constant_(self.init_proposal_boxes.weight[:, 2:], 1.0)

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]):
        B = features[0].shape[0]
        H, W = image_size
        scale = features[0].new_tensor([W, H, W, H])
        boxes = (cxcywh_to_xyxy(self.init_proposal_boxes.weight) * scale)[None].expand(B, -1, -1)
        pro = self.init_proposal_features.weight.repeat(B, 1, 1)  # (B, P, C); not a view of the weight
        all_logits, all_boxes = [], []
        for stage in self.head_series:
            logits, boxes, pro = stage(features, boxes, pro)
            all_logits.append(logits)
            all_boxes.append(boxes)
            boxes = boxes.detach()
        return all_logits, all_boxes, pro
