"""SIFA's learned offset field (Long et al., "Stand-Alone Inter-Frame Attention in Video Models",
CVPR 2022): where each position of frame t looks for its keys in frame t+1.

Every SIFA block with learned offsets — SIFA-Net's :class:`~kinetix.layers.temporal.InterFrameAttention`,
SIFA-Transformer's ``InterFrameResidual`` built with ``sifa_offsets="learned"`` (the paper's block) —
predicts ``2K²`` offsets per position and time step with its ``conv_offset`` (``(B*T, 2K², h, w)``, DCN
layout: channel ``2k`` = dy, ``2k+1`` = dx of tap ``k``) from the motion-saliency map; a forward hook
on that conv reads them. The field shown is the mean displacement of the ``K x K`` taps, ``(dy, dx)``
per position, converted to input pixels (feature stride ``W / w``). Blocks with fixed zero offsets
(the released SIFA-Transformer) have no ``conv_offset`` and no field to show.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kinetix.errors import ConfigError


def offset_blocks(model: nn.Module) -> list[str]:
    """Names of the SIFA blocks with learned offsets (a ``conv_offset`` conv), in model order."""
    return [n for n, m in model.named_modules() if isinstance(getattr(m, "conv_offset", None), nn.Conv2d)]


@torch.no_grad()
def offset_field(
    model: nn.Module, clip: torch.Tensor, block: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Mean tap displacement of one SIFA block on ``clip (B, C, T, H, W)``.

    Returns ``flow (B, T', h, w, 2)`` as ``(dy, dx)`` in input pixels, the logits and the block name
    (default: the first block, the finest grid)."""
    blocks = offset_blocks(model)
    if not blocks:
        raise ConfigError(
            f"{type(model).__name__} has no SIFA block with learned offsets; the offsets method is for "
            "SIFA-Net and SIFA-Transformer built with sifa_offsets='learned'"
        )
    name = block or blocks[0]
    if name not in blocks:
        raise ConfigError(
            f"{name!r} is not a SIFA block of {type(model).__name__}; one of {', '.join(blocks)}"
        )
    sifa = dict(model.named_modules())[name]
    out = []
    hook = sifa.conv_offset.register_forward_hook(lambda m, i, o: out.append(o))
    try:
        logits = model(clip)
    finally:
        hook.remove()
    off = out[0]  # (B*T', 2K², h, w): channel 2k = dy, 2k+1 = dx of tap k
    stride = clip.shape[-1] / off.shape[-1]
    flow = torch.stack([off[:, 0::2].mean(1), off[:, 1::2].mean(1)], -1) * stride  # (B*T', h, w, 2)
    return flow.view(clip.shape[0], -1, *flow.shape[1:]), logits, name
