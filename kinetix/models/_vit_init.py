"""Weight initialisation of the video transformers, and their initialisation from image ViTs.

``init_vit_weights(model)``: timm/official ViT init (truncated normal 0.02 for Linear weights and the
``pos_embed``/``cls_token`` parameters, zero biases, LayerNorm (1, 0)); every ``*_fc`` of a
:class:`~kinetix.layers.spacetime.SpaceTimeBlock` is then zeroed again so each extra attention stage
starts as an identity.
"""

from __future__ import annotations

import torch.nn as nn


def init_vit_weights(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if name.split(".")[-1].endswith("_fc") and isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.split(".")[-1] in ("pos_embed", "cls_token", "temporal_cls_token", "temporal_pos_embed"):
            nn.init.trunc_normal_(p, std=0.02)
