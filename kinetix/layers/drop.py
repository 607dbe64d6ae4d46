"""Stochastic depth (DropPath; Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016).

``DropPath(p)`` zeroes a whole residual branch per sample with probability ``p`` during training and
rescales the kept ones by ``1/(1-p)``. Input ``(B, ...)`` -> same shape. Identity at eval or p=0.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep.div_(1.0 - p)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"
