"""Shared helpers of the deploy tests."""

import pytest
import torch
import torch.nn as nn


def _randomize(model: nn.Module, std: float = 0.05) -> nn.Module:
    """Random weights where the recipes start at zero / near zero (classifier heads at std 1e-3,
    TimeSformer's ``temporal_fc``, GSM's gate conv, SIFA's offset conv, ViViT's temporal MSA), so
    logits are far from constant and every temporal path is exercised; eval mode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv3d) and float(m.weight.abs().max()) < 1e-2:
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * std)
    return model.eval()


@pytest.fixture
def randomize():
    return _randomize
