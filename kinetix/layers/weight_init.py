"""Shared weight initialisation of transformer blocks (ViT / Swin recipe)."""

import torch.nn as nn


def trunc_normal_init_(model: nn.Module, std: float = 0.02) -> None:
    """Linear weights ~ truncated N(0, std) with zero bias; LayerNorm weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
