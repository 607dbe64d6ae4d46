"""Params and GMACs of registered models, measured on the meta device (no real compute, so even
TimeSformer-L at 96 frames is counted in a second)."""

from __future__ import annotations

import torch

from kinetix.utils.flops import FlopsResult, count_flops

from ._registry import create_model, get_pretrained_cfg


def example_input(
    model: torch.nn.Module,
    batch_size: int = 1,
    num_frames: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    device="cpu",
) -> torch.Tensor:
    """A ``(B, 3, T, H, W)`` input for ``model`` from its PretrainedCfg (overridable)."""
    cfg = model.pretrained_cfg
    t = num_frames or cfg.num_frames
    size = input_size or cfg.input_size
    h, w = (size, size) if isinstance(size, int) else size
    return torch.zeros(batch_size, 3, t, h, w, device=device)


def model_complexity(
    name: str, num_frames: int | None = None, input_size: int | tuple[int, int] | None = None, **kwargs
) -> FlopsResult:
    """GMACs per view and parameter count of model ``name``.

    Counted on the meta device (no compute). Models whose forward depends on data (e.g. a detector
    grouping boxes by FPN level) cannot run there; they are counted on a real zero input instead."""
    cfg = get_pretrained_cfg(name)
    if num_frames is not None:
        kwargs.setdefault("num_frames", num_frames)
    try:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        x = example_input(model, 1, num_frames or cfg.num_frames, input_size, device="meta")
        return count_flops(model, x)
    except (NotImplementedError, RuntimeError):  # data-dependent op without a meta kernel
        model = create_model(name, **kwargs)
        x = example_input(model, 1, num_frames or cfg.num_frames, input_size)
        return count_flops(model, x)
