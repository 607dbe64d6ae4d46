"""Exponential moving average of model weights (Polyak averaging, as in timm's ``ModelEmaV3``).

``ema = decay * ema + (1 - decay) * weights`` after every optimiser step, with the effective decay
warmed up as ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the random
init. Buffers (BatchNorm statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEMA(nn.Module):
    """Holds ``module``: a frozen copy of a model whose weights track the live model's average."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = list(self.module.parameters())
        live_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, live_p, 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates += 1

    def forward(self, x):
        return self.module(x)
