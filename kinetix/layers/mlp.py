"""Transformer feed-forward block (Vaswani et al. 2017; timm key names ``fc1``/``fc2``).

``(..., in_features) -> (..., out_features)``: Linear -> activation -> dropout -> Linear -> dropout.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Mlp(nn.Module):
    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``act(fc1(x))`` (after dropout): the input of ``fc2``."""
        return self.drop1(self.act(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.hidden(x)))
