"""TSN partial BatchNorm (Wang et al., "Temporal Segment Networks", ECCV 2016, §3.2).

When fine-tuning on small video datasets, every BatchNorm layer but the first keeps its ImageNet
statistics and affine parameters: :func:`set_partial_bn` puts them in eval mode and freezes their
weights. Call it after every ``module.train()`` (``train()`` puts every layer back in training mode).
"""

from __future__ import annotations

import torch.nn as nn

from kinetix.layers.temporal import GateShift, NonLocal3D


def set_partial_bn(module: nn.Module) -> int:
    """Freeze every BatchNorm (1-D, 2-D or 3-D) of ``module`` but the first, in module order:
    eval mode (running statistics fixed) and ``requires_grad=False``. Returns how many were frozen.

    BatchNorms inside temporal layers (GSM gates, non-local blocks) have no ImageNet statistics to
    keep and stay trainable, as in the official code (which freezes ``BatchNorm2d`` only): a frozen
    zero-initialised non-local output BN would keep the block at the identity for ever."""
    new = [m for m in module.modules() if isinstance(m, GateShift | NonLocal3D)]
    skip = {id(b) for m in new for b in m.modules()}
    bns = [
        m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in skip
    ]
    for m in bns[1:]:
        m.eval()
        m.requires_grad_(False)
    return len(bns[1:])
