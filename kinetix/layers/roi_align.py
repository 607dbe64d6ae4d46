"""RoIAlign (He et al., Mask R-CNN, ICCV 2017) in pure PyTorch, vectorised over boxes.

``aligned=True`` gives the half-pixel-corrected ``ROIAlignV2`` of Detectron2 (pixel ``i`` covers
``[i, i+1)``; box coordinates are shifted by −0.5 before sampling). Each output bin averages
``sampling_ratio × sampling_ratio`` bilinear samples. A sample outside ``[-1, H] × [-1, W]`` is 0;
inside, its coordinates are clamped to the border pixels, exactly as the CUDA/C++ kernels do.

Sampling runs through one ``F.grid_sample`` call over all boxes (coordinates clamped as the kernels
do; samples beyond the border moved far outside, where zero padding gives 0) and one ``avg_pool2d``
over the ``g × g`` samples of each bin, so there is no loop over boxes.

Like the CUDA/C++ kernels, the output is differentiable w.r.t. ``features`` only, not w.r.t. the
box coordinates.

Shapes: ``features (N, C, H, W)``, ``boxes (N, K, 4)`` x1, y1, x2, y2 in input-image pixels (the
same number K of boxes per image, as in query-based detectors) → ``(N, K, C, ph, pw)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sample_coords(lo: torch.Tensor, size: torch.Tensor, bins: int, ratio: int) -> torch.Tensor:
    """Sample positions ``lo + (i + (j + 0.5) / ratio) · size / bins`` → ``(..., bins·ratio)``."""
    steps = (torch.arange(bins * ratio, device=lo.device, dtype=lo.dtype) + 0.5) / ratio
    return lo[..., None] + steps * (size / bins)[..., None]


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """Pool ``boxes (N, K, 4)`` from ``features (N, C, H, W)`` into ``(N, K, C, ph, pw)`` bins."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if sampling_ratio < 1:
        raise ValueError("sampling_ratio must be >= 1 (the adaptive mode is not supported)")
    N, C, H, W = features.shape
    K = boxes.shape[1]
    g = sampling_ratio
    # as the CUDA/C++ kernels: no gradient w.r.t. the box coordinates (only w.r.t. the features)
    b = boxes.detach().to(features.dtype) * spatial_scale - (0.5 if aligned else 0.0)
    bw, bh = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    if not aligned:  # legacy RoIAlign forces boxes to be at least 1×1
        bw, bh = bw.clamp(min=1.0), bh.clamp(min=1.0)
    ys = _inside(_sample_coords(b[..., 1], bh, ph, g), H)  # (N, K, ph·g)
    xs = _inside(_sample_coords(b[..., 0], bw, pw, g), W)  # (N, K, pw·g)
    # grid_sample(align_corners=False) maps normalised u to pixel ((u + 1)·W − 1) / 2
    gx = ((2 * xs + 1) / W - 1)[:, :, None, :].expand(N, K, ph * g, pw * g)
    gy = ((2 * ys + 1) / H - 1)[:, :, :, None].expand(N, K, ph * g, pw * g)
    grid = torch.stack([gx, gy], -1).reshape(N, K * ph * g, pw * g, 2)  # boxes stacked along y
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = F.avg_pool2d(out, g) if g > 1 else out  # (N, C, K·ph, pw): g×g windows never straddle boxes
    return out.view(N, C, K, ph, pw).transpose(1, 2)


def _inside(coords: torch.Tensor, size: int) -> torch.Tensor:
    """The kernels' border rule on sample coordinates: clamp ``[-1, size]`` to ``[0, size − 1]``; move
    samples beyond it far outside, where zero padding makes all four neighbours 0."""
    outside = (coords < -1) | (coords > size)
    return torch.where(outside, torch.full_like(coords, -10.0), coords.clamp(0, size - 1))
