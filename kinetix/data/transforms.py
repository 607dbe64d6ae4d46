"""Clip transforms: spatial augmentation on uint8 video, box-aware, then one normalisation.

Protocol — every transform is a callable ``t(clip, target=None, generator=None) -> (clip, target)``:

- ``clip`` is a uint8 tensor ``(T, H, W, C)`` (RGB, as decoded). Multi-crop transforms
  (:class:`ThreeCrop`, :class:`TenCrop`) add a leading view dim ``(V, T, h, w, C)``. :class:`Normalize`
  ends the chain and returns float ``(C, T, H, W)`` (or ``(V, C, T, H, W)``).
- ``target`` is ``None`` or a dict. Keys used here: ``"label"`` (int; :class:`RandomHorizontalFlip`
  may swap it through a label map) and, for detection, ``"boxes"`` (float ``(N, 4)`` absolute pixel
  ``x1, y1, x2, y2`` in the current clip's frame). Geometric transforms resize / shift / clip / flip
  the boxes and drop degenerate ones (narrower than 1 px) together with every per-box entry listed
  in :data:`PER_BOX_KEYS`. The input dict is never mutated (a shallow copy is returned).
- ``generator`` is an optional ``torch.Generator``. Random parameters are drawn ONCE per clip from
  it (or from torch's global RNG), so every frame gets the same crop / flip / colour change; the
  work itself is vectorised over frames (no per-frame Python loops).

References: TSN/TSM ``GroupMultiScaleCrop``/``GroupFullResSample``/``GroupOverSample`` (Wang et al.
2016; Lin et al. 2019), Inception random-resized crop (Szegedy et al. 2015), RandAugment (Cubuk et
al. 2020), random erasing (Zhong et al. 2020), mixup (Zhang et al. 2018), CutMix (Yun et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PER_BOX_KEYS = ("boxes", "labels", "person_ids")
MIN_BOX_SIZE = 1.0  # pixels; boxes thinner than this after a crop are dropped


# ----------------------------------------------------------------------------- random helpers
def _rand(g: torch.Generator | None) -> float:
    return float(torch.rand((), generator=g))


def _uniform(g, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand(g)


def _randint(g, n: int) -> int:
    """Uniform integer in ``[0, n)``."""
    return int(torch.randint(n, (), generator=g))


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


# ----------------------------------------------------------------------------- functional ops
def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 ``(..., H, W, C)`` to ``size=(h, w)``."""
    *lead, H, W, C = clip.shape
    h, w = size
    if (h, w) == (H, W):
        return clip
    x = clip.reshape(-1, H, W, C).permute(0, 3, 1, 2)  # (N, C, H, W) channels-last view, no copy
    shrink = h < H or w < W
    if x.dtype != torch.uint8:
        x = x.float()
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return y.permute(0, 2, 3, 1).reshape(*lead, h, w, C)  # back to (..., h, w, C)


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(h, w) with the short side equal to ``short``, keeping the aspect ratio (long side truncated)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def crop(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Spatial crop of ``(..., H, W, C)`` (a view, no copy)."""
    return clip[..., top : top + height, left : left + width, :]


def hflip(clip: torch.Tensor) -> torch.Tensor:
    return clip.flip(-2)


def _pad_to(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad bottom/right so that the clip is at least ``height x width`` (only when smaller)."""
    H, W = clip.shape[-3:-1]
    if height <= H and width <= W:
        return clip
    return F.pad(clip, (0, 0, 0, max(0, width - W), 0, max(0, height - H)))


# ----------------------------------------------------------------------------- box helpers
def _with_boxes(target) -> bool:
    return target is not None and target.get("boxes") is not None


def _filter_boxes(target: dict, boxes: torch.Tensor) -> dict:
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
    out = dict(target)
    out["boxes"] = boxes
    if not bool(keep.all()):
        for k in PER_BOX_KEYS:
            if out.get(k) is not None:
                out[k] = out[k][keep]
    return out


def resize_boxes(target, sx: float, sy: float):
    if not _with_boxes(target):
        return target
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    out = dict(target)
    out["boxes"] = torch.as_tensor(target["boxes"], dtype=torch.float32) * scale
    return out


def crop_boxes(target, top: int, left: int, height: int, width: int):
    """Shift boxes into crop coordinates, clip them to the crop and drop degenerate ones."""
    if not _with_boxes(target):
        return target
    b = torch.as_tensor(target["boxes"], dtype=torch.float32) - torch.tensor([left, top, left, top])
    b = torch.stack(
        [
            b[:, 0].clamp(0, width),
            b[:, 1].clamp(0, height),
            b[:, 2].clamp(0, width),
            b[:, 3].clamp(0, height),
        ],
        1,
    )
    return _filter_boxes(target, b)


def flip_boxes(target, width: int):
    if not _with_boxes(target):
        return target
    b = torch.as_tensor(target["boxes"], dtype=torch.float32)
    out = dict(target)
    out["boxes"] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)
    return out


def _crop_resize(clip, target, top, left, h, w, size):
    """Crop ``(top, left, h, w)`` then resize to ``size=(out_h, out_w)``; boxes follow."""
    out_h, out_w = size
    clip = resize(crop(clip, top, left, h, w), size)
    target = resize_boxes(crop_boxes(target, top, left, h, w), out_w / w, out_h / h)
    return clip, target


# ----------------------------------------------------------------------------- transforms
class Transform:
    """Base class; subclasses implement ``__call__(clip, target=None, generator=None)``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, clip, target=None, generator=None):
        for t in self.transforms:
            clip, target = t(clip, target, generator)
        return clip, target

    def __repr__(self) -> str:
        return "Compose(\n" + "".join(f"  {t!r},\n" for t in self.transforms) + ")"


class ShortSideResize(Transform):
    """Resize so that the short side equals ``size`` (TSN ``GroupScale``); no-op when it already does."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, clip, target=None, generator=None):
        H, W = clip.shape[-3:-1]
        h, w = short_side_size(H, W, self.size)
        return resize(clip, (h, w)), resize_boxes(target, w / W, h / H)


class Resize(Transform):
    """Resize to exactly ``size`` (int = square, or ``(h, w)``), ignoring the aspect ratio."""

    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, clip, target=None, generator=None):
        H, W = clip.shape[-3:-1]
        h, w = self.size
        return resize(clip, (h, w)), resize_boxes(target, w / W, h / H)


class CenterCrop(Transform):
    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, clip, target=None, generator=None):
        h, w = self.size
        clip = _pad_to(clip, h, w)
        H, W = clip.shape[-3:-1]
        top, left = round((H - h) / 2), round((W - w) / 2)
        return crop(clip, top, left, h, w), crop_boxes(target, top, left, h, w)


class RandomCrop(Transform):
    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, clip, target=None, generator=None):
        h, w = self.size
        clip = _pad_to(clip, h, w)
        H, W = clip.shape[-3:-1]
        top, left = _randint(generator, H - h + 1), _randint(generator, W - w + 1)
        return crop(clip, top, left, h, w), crop_boxes(target, top, left, h, w)


class RandomResizedCrop(Transform):
    """Inception-style crop: area fraction in ``scale``, aspect ratio log-uniform in ``ratio``
    (10 attempts, then a centre crop with the ratio clamped), resized to ``size``."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = _pair(size), tuple(scale), tuple(ratio)

    def get_params(self, H: int, W: int, g=None) -> tuple[int, int, int, int]:
        area = H * W
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_r))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= W and 0 < h <= H:
                return _randint(g, H - h + 1), _randint(g, W - w + 1), h, w
        in_ratio = W / H
        if in_ratio < self.ratio[0]:
            w, h = W, round(W / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = H, round(H * self.ratio[1])
        else:
            h, w = H, W
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, clip, target=None, generator=None):
        top, left, h, w = self.get_params(*clip.shape[-3:-1], generator)
        return _crop_resize(clip, target, top, left, h, w, self.size)


def multiscale_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int, more: bool = True):
    """TSN/TSM fixed crop offsets ``(x, y)``: 4 corners + centre (+ 8 more with ``more``),
    on a grid of quarter steps ``((image - crop) // 4)``."""
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


class MultiScaleCrop(Transform):
    """TSM ``GroupMultiScaleCrop``: crop side = ``int(short_side * s)`` for s in ``scales``, crop
    height/width scales at most ``max_distort`` apart, sizes within 2 px of the output snapped to it,
    offset drawn from :func:`multiscale_offsets`; the crop is resized to ``size``."""

    def __init__(self, size, scales=(1, 0.875, 0.75, 0.66), max_distort: int = 1, more_fix_crop=True):
        self.size, self.scales = _pair(size), tuple(scales)
        self.max_distort, self.more_fix_crop = max_distort, more_fix_crop

    def crop_pairs(self, H: int, W: int) -> list[tuple[int, int]]:
        """All allowed ``(crop_w, crop_h)`` pairs for an ``H x W`` frame."""
        out_h, out_w = self.size
        sizes = [int(min(H, W) * s) for s in self.scales]
        crop_h = [out_h if abs(c - out_h) < 3 else c for c in sizes]
        crop_w = [out_w if abs(c - out_w) < 3 else c for c in sizes]
        return [
            (w, h)
            for i, h in enumerate(crop_h)
            for j, w in enumerate(crop_w)
            if abs(i - j) <= self.max_distort
        ]

    def get_params(self, H: int, W: int, g=None) -> tuple[int, int, int, int]:
        pairs = self.crop_pairs(H, W)
        cw, ch = pairs[_randint(g, len(pairs))]
        offsets = multiscale_offsets(W, H, cw, ch, self.more_fix_crop)
        x, y = offsets[_randint(g, len(offsets))]
        return y, x, ch, cw

    def __call__(self, clip, target=None, generator=None):
        top, left, h, w = self.get_params(*clip.shape[-3:-1], generator)
        return _crop_resize(clip, target, top, left, h, w, self.size)


class _MultiCrop(Transform):
    def __init__(self, size):
        self.size = _pair(size)

    def offsets(self, H: int, W: int) -> list[tuple[int, int, bool]]:  # (top, left, flipped)
        raise NotImplementedError

    def __call__(self, clip, target=None, generator=None):
        if _with_boxes(target):
            raise ValueError(f"{type(self).__name__} makes several views and cannot carry boxes")
        h, w = self.size
        clip = _pad_to(clip, h, w)
        offsets = self.offsets(*clip.shape[-3:-1])
        views = [crop(clip, t, l, h, w) for t, l, _ in offsets]
        views = [hflip(v) if f else v for v, (_, _, f) in zip(views, offsets)]
        return torch.stack(views), target  # (V, T, h, w, C)


class ThreeCrop(_MultiCrop):
    """TSM ``GroupFullResSample``: 3 crops along the long side — start, end, centre (official
    order), centred on the short side, offsets on quarter steps. Returns ``(3, T, h, w, C)``."""

    def offsets(self, H, W):
        h, w = self.size
        hs, ws = (H - h) // 4, (W - w) // 4
        if W >= H:
            return [(2 * hs, 0, False), (2 * hs, 4 * ws, False), (2 * hs, 2 * ws, False)]
        return [(0, 2 * ws, False), (4 * hs, 2 * ws, False), (2 * hs, 2 * ws, False)]


class TenCrop(_MultiCrop):
    """TSM ``GroupOverSample``: 4 corners + centre, each followed by its horizontal flip.
    Returns ``(10, T, h, w, C)``."""

    def offsets(self, H, W):
        h, w = self.size
        out = []
        for x, y in multiscale_offsets(W, H, w, h, more=False):
            out += [(y, x, False), (y, x, True)]
        return out


class RandomHorizontalFlip(Transform):
    """Flip with probability ``p``; ``label_map`` swaps direction-sensitive labels (e.g. SSv1
    ``{86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}``) in ``target["label"]``."""

    def __init__(self, p: float = 0.5, label_map: dict[int, int] | None = None):
        self.p, self.label_map = p, dict(label_map or {})

    def __call__(self, clip, target=None, generator=None):
        if _rand(generator) >= self.p:
            return clip, target
        clip = hflip(clip)
        target = flip_boxes(target, clip.shape[-2])
        if target is not None and self.label_map and target.get("label") is not None:
            target = dict(target)
            label = int(target["label"])
            target["label"] = self.label_map.get(label, label)
        return clip, target


# ----------------------------------------------------------------------------- colour (float 0..255)
def _gray(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` float -> ``(..., 1)`` luma (ITU-R 601, as PIL ``convert("L")``)."""
    r, g, b = x.unbind(-1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-1)


def _blend(a: torch.Tensor, b, factor: float) -> torch.Tensor:
    return (b + factor * (a - b)).clamp_(0, 255)


def _frame_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-frame mean luma of ``(T, H, W, C)`` -> ``(T, 1, 1, 1)``."""
    return _gray(x).mean(dim=(-3, -2, -1), keepdim=True)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` RGB in [0, 1] -> HSV in [0, 1] (``colorsys`` formulas, vectorised)."""
    r, g, b = x.unbind(-1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    s = delta / maxc.clamp_min(1e-12)
    d = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0).remainder_(1.0), 0.0)
    return torch.stack([h, s, maxc], -1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-1)
    k = (torch.tensor([5.0, 3.0, 1.0]) + (h * 6).unsqueeze(-1)) % 6  # (..., 3)
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * (torch.minimum(k, 4 - k).clamp(0, 1))


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, in [-0.5, 0.5]) of float 0..255 RGB."""
    hsv = _rgb_to_hsv(x / 255)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return _hsv_to_rgb(hsv) * 255


class ColorJitter(Transform):
    """Brightness / contrast / saturation / hue jitter, factors drawn once per clip, applied in a
    random order. ``brightness=0.4`` means a factor in ``[0.6, 1.4]``; ``hue`` in ``[0, 0.5]``."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p: float = 1.0):
        self.brightness, self.contrast, self.saturation, self.hue, self.p = (
            brightness,
            contrast,
            saturation,
            hue,
            p,
        )

    def __call__(self, clip, target=None, generator=None):
        if self.p < 1 and _rand(generator) >= self.p:
            return clip, target
        g = generator
        ops = []
        if self.brightness:
            f = _uniform(g, max(0.0, 1 - self.brightness), 1 + self.brightness)
            ops.append(lambda x, f=f: (x * f).clamp_(0, 255))
        if self.contrast:
            f = _uniform(g, max(0.0, 1 - self.contrast), 1 + self.contrast)
            ops.append(lambda x, f=f: _blend(x, _frame_mean(x), f))
        if self.saturation:
            f = _uniform(g, max(0.0, 1 - self.saturation), 1 + self.saturation)
            ops.append(lambda x, f=f: _blend(x, _gray(x), f))
        if self.hue:
            f = _uniform(g, -self.hue, self.hue)
            ops.append(lambda x, f=f: adjust_hue(x, f))
        if not ops:
            return clip, target
        x = clip.float()
        for i in torch.randperm(len(ops), generator=g).tolist():
            x = ops[i](x)
        return x.round_().to(torch.uint8), target


class RandomGrayscale(Transform):
    def __init__(self, p: float = 0.1):
        self.p = p

    def __call__(self, clip, target=None, generator=None):
        if _rand(generator) >= self.p:
            return clip, target
        gray = _gray(clip.float()).round_().to(torch.uint8)
        return gray.expand(clip.shape).contiguous(), target


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per frame and channel (PIL semantics), vectorised.
    ``x``: float ``(T, H, W, C)`` holding integers 0..255."""
    T, H, W, C = x.shape
    xi = x.permute(0, 3, 1, 2).reshape(T * C, H * W).long()  # (T*C, H*W)
    hist = torch.zeros(T * C, 256).scatter_add_(1, xi, torch.ones(T * C, H * W))
    last = 255 - (hist.flip(1) > 0).float().argmax(1, keepdim=True)  # last non-empty bin
    step = (H * W - hist.gather(1, last)) // 255  # (T*C, 1)
    lut = (hist.cumsum(1) + step // 2) // step.clamp_min(1)
    lut = torch.cat([torch.zeros(T * C, 1), lut[:, :-1]], 1).clamp_(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256.0))
    return lut.gather(1, xi).view(T, C, H, W).permute(0, 2, 3, 1)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    scale = torch.where(hi > lo, 255 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return ((x - lo) * scale).clamp_(0, 255)


def _sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    C = x.shape[-1]
    k = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    nchw = x.permute(0, 3, 1, 2)  # (T, C, H, W) view
    blur = F.conv2d(nchw, k.expand(C, 1, 3, 3), groups=C).round_()
    degenerate = nchw.clone()  # borders keep the original pixels (PIL)
    degenerate[..., 1:-1, 1:-1] = blur
    return _blend(x, degenerate.permute(0, 2, 3, 1), factor)


def _affine(x: torch.Tensor, matrix: list[list[float]], translate=(0.0, 0.0)) -> torch.Tensor:
    """Inverse-map affine warp of ``(T, H, W, C)`` about the centre, nearest neighbour, zero fill.
    ``matrix`` (2x2) and ``translate`` (pixels) map output pixel coords to input coords."""
    T, H, W, C = x.shape
    a = torch.tensor(matrix, dtype=torch.float32)
    # pixel coords relative to the centre -> normalised [-1, 1] (align_corners=False)
    to_px, to_norm = torch.diag(torch.tensor([W / 2, H / 2])), torch.diag(torch.tensor([2 / W, 2 / H]))
    theta = torch.cat([to_norm @ a @ to_px, (to_norm @ torch.tensor(translate)).unsqueeze(1)], 1)
    grid = F.affine_grid(theta[None], [1, C, H, W], align_corners=False).expand(T, H, W, 2)
    out = F.grid_sample(x.permute(0, 3, 1, 2), grid, mode="nearest", align_corners=False)
    return out.permute(0, 2, 3, 1)


class RandAugment(Transform):
    """RandAugment for video: ``num_ops`` ops drawn once per clip (uniformly from 14, timm /
    torchvision set), each with magnitude ``magnitude`` out of 10 and a random sign, applied to
    every frame. When the target carries boxes only photometric ops are drawn.

    Magnitude ``m`` maps to: rotate ±30·m/10 deg, shear ±0.3·m/10, translate ±0.45·m/10 of the
    side, brightness/colour/contrast/sharpness factor 1 ± 0.9·m/10, posterize to 8 − int(4·m/10)
    bits, solarize threshold 255·(1 − m/10).
    """

    GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
    OPS = (
        "identity",
        "autocontrast",
        "equalize",
        "solarize",
        "color",
        "posterize",
        "contrast",
        "brightness",
        "sharpness",
        *GEOMETRIC,
    )

    def __init__(self, num_ops: int = 2, magnitude: float = 9, ops: Sequence[str] | None = None):
        self.num_ops, self.magnitude = int(num_ops), float(magnitude)
        self.ops = tuple(ops or self.OPS)
        unknown = set(self.ops) - set(self.OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; choose from {self.OPS}")

    def apply(self, x: torch.Tensor, op: str, sign: float) -> torch.Tensor:
        """Apply one op to float ``(T, H, W, C)`` (0..255)."""
        m = self.magnitude / 10
        H, W = x.shape[1:3]
        if op == "identity":
            return x
        if op == "autocontrast":
            return _autocontrast(x)
        if op == "equalize":
            return _equalize(x)
        if op == "solarize":
            thr = 255 * (1 - m)
            return torch.where(x >= thr, 255 - x, x)
        if op == "posterize":
            q = 2.0 ** (8 - max(1, 8 - int(4 * m)))
            return torch.floor(x / q) * q
        if op == "brightness":
            return (x * (1 + sign * 0.9 * m)).clamp_(0, 255)
        if op == "color":
            return _blend(x, _gray(x), 1 + sign * 0.9 * m)
        if op == "contrast":
            return _blend(x, _frame_mean(x), 1 + sign * 0.9 * m)
        if op == "sharpness":
            return _sharpness(x, 1 + sign * 0.9 * m)
        if op == "rotate":
            a = math.radians(sign * 30 * m)
            return _affine(x, [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        if op == "shear_x":
            return _affine(x, [[1, sign * 0.3 * m], [0, 1]])
        if op == "shear_y":
            return _affine(x, [[1, 0], [sign * 0.3 * m, 1]])
        if op == "translate_x":
            return _affine(x, [[1, 0], [0, 1]], (-sign * 0.45 * m * W, 0.0))
        if op == "translate_y":
            return _affine(x, [[1, 0], [0, 1]], (0.0, -sign * 0.45 * m * H))
        raise ValueError(op)

    def __call__(self, clip, target=None, generator=None):
        ops = [o for o in self.ops if not (_with_boxes(target) and o in self.GEOMETRIC)]
        chosen = [
            (ops[_randint(generator, len(ops))], 1.0 if _rand(generator) < 0.5 else -1.0)
            for _ in range(self.num_ops)
        ]
        if all(op == "identity" for op, _ in chosen):
            return clip, target
        x = clip.reshape(-1, *clip.shape[-3:]).float()  # (T', H, W, C), views folded into T
        for op, sign in chosen:
            x = self.apply(x, op, sign)
        return x.round_().clamp_(0, 255).to(torch.uint8).reshape(clip.shape), target


class RandomErasing(Transform):
    """Erase one rectangle (same place in every frame) with probability ``p``: area fraction in
    ``scale``, log-uniform aspect in ``ratio``; filled with random pixels (``mode="pixel"``, one
    noise image shared by all frames) or zeros (``"const"``). Operates on uint8, before Normalize."""

    def __init__(self, p=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), mode="pixel"):
        if mode not in ("pixel", "const"):
            raise ValueError(f"mode must be 'pixel' or 'const', got {mode!r}")
        self.p, self.scale, self.ratio, self.mode = p, tuple(scale), tuple(ratio), mode

    def __call__(self, clip, target=None, generator=None):
        if _rand(generator) >= self.p:
            return clip, target
        H, W, C = clip.shape[-3:]
        g = generator
        for _ in range(10):
            area = H * W * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, math.log(self.ratio[0]), math.log(self.ratio[1])))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < h < H and 0 < w < W:
                top, left = _randint(g, H - h + 1), _randint(g, W - w + 1)
                if self.mode == "pixel":
                    fill = torch.randint(0, 256, (h, w, C), generator=g, dtype=torch.uint8)
                else:
                    fill = 0
                clip = clip.clone()  # never write into the caller's (possibly shared) buffer
                clip[..., top : top + h, left : left + w, :] = fill
                break
        return clip, target


class Normalize(Transform):
    """uint8 ``(..., T, H, W, C)`` RGB -> float ``(..., C, T, H, W)``:
    ``(x * value_range / 255 - mean) / std`` in ``channel_order`` (``"BGR"`` reverses channels).
    ``value_range=1.0``: ImageNet-style [0, 1] input; ``255.0``: Caffe-style raw 0..255."""

    def __init__(self, mean, std, channel_order: str = "RGB", value_range: float = 1.0):
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.channel_order, self.value_range = channel_order, float(value_range)
        std_t = torch.tensor(self.std)
        self._scale = (self.value_range / 255.0) / std_t  # (C,)
        self._shift = torch.tensor(self.mean) / std_t

    def __call__(self, clip, target=None, generator=None):
        if self.channel_order == "BGR":
            clip = clip.flip(-1)  # copy on uint8 (4x cheaper than on float)
        x = clip.movedim(-1, -4)  # (..., C, T, H, W) view
        C = x.shape[-4]
        out = x.to(torch.float32, memory_format=torch.contiguous_format)
        out.mul_(self._scale.view(C, 1, 1, 1)).sub_(self._shift.view(C, 1, 1, 1))
        return out, target


# ----------------------------------------------------------------------------- batch level
class MixupCutmix:
    """Batch-level mixup / CutMix with soft labels (timm semantics, "batch" mode).

    ``x`` float ``(B, C, T, H, W)`` (mixed IN PLACE with its batch-reversed self), ``labels`` int
    ``(B,)`` or soft ``(B, num_classes)``. Returns ``(x, soft_labels)``, rows summing to 1. With
    probability ``prob`` one op is applied: CutMix with probability ``switch_prob`` when both
    alphas are > 0. CutMix cuts the same box from every frame and corrects ``lam`` to the exact
    box area. Label smoothing: ``1 - ls + ls/K`` on the target, ``ls/K`` elsewhere.
    """

    def __init__(
        self,
        alpha_mixup: float = 0.8,
        alpha_cutmix: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 400,
        seed: int | None = None,
    ):
        if alpha_mixup <= 0 and alpha_cutmix <= 0:
            raise ValueError("MixupCutmix needs alpha_mixup > 0 or alpha_cutmix > 0")
        self.alpha_mixup, self.alpha_cutmix = alpha_mixup, alpha_cutmix
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.rng = np.random.default_rng(seed)
        self.last_params: dict = {}

    def soft_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 2:
            return labels.float()
        off = self.label_smoothing / self.num_classes
        out = torch.full((labels.shape[0], self.num_classes), off, device=labels.device)
        return out.scatter_(1, labels.long().view(-1, 1), 1.0 - self.label_smoothing + off)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor):
        y = self.soft_labels(labels)
        self.last_params = {"op": None, "lam": 1.0}
        if self.rng.random() >= self.prob:
            return x, y
        use_cutmix = self.alpha_cutmix > 0 and (self.alpha_mixup <= 0 or self.rng.random() < self.switch_prob)
        alpha = self.alpha_cutmix if use_cutmix else self.alpha_mixup
        lam = float(self.rng.beta(alpha, alpha))
        if use_cutmix:
            H, W = x.shape[-2:]
            cut = math.sqrt(1 - lam)
            ch, cw = int(H * cut), int(W * cut)
            cy, cx = int(self.rng.integers(H)), int(self.rng.integers(W))
            y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, H)
            x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, W)
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]  # flip materialises first: safe
            lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (H * W)
            self.last_params = {"op": "cutmix", "lam": lam, "box": (int(y0), int(y1), int(x0), int(x1))}
        else:
            other = x.flip(0).mul_(1.0 - lam)  # (B, C, T, H, W) copy, needed: x is overwritten next
            x.mul_(lam).add_(other)
            self.last_params = {"op": "mixup", "lam": lam}
        return x, y * lam + y.flip(0) * (1.0 - lam)


# ----------------------------------------------------------------------------- factories
def train_transform(
    input_size: int,
    mean,
    std,
    channel_order: str = "RGB",
    value_range: float = 1.0,
    scale_jitter: str = "multiscale",
    flip: bool = True,
    flip_label_map: dict[int, int] | None = None,
    randaugment: tuple[int, float] | None = None,
    erase_prob: float = 0.0,
    color_jitter: float | tuple = 0.0,
) -> Compose:
    """Training pipeline from plain values (the engine passes the model's PretrainedCfg fields).

    ``scale_jitter="multiscale"``: short side -> ``input_size*256//224``, then TSM multi-scale
    crop; ``"rrc"``: random resized crop (area 0.08–1). Then flip (with label swap), colour jitter
    (float s -> brightness=contrast=saturation=s, or a 4-tuple incl. hue), RandAugment ``(n, m)``,
    random erasing, normalise.
    """
    ts: list = []
    if scale_jitter == "multiscale":
        ts += [ShortSideResize(input_size * 256 // 224), MultiScaleCrop(input_size)]
    elif scale_jitter == "rrc":
        ts.append(RandomResizedCrop(input_size))
    else:
        raise ValueError(f"scale_jitter must be 'multiscale' or 'rrc', got {scale_jitter!r}")
    if flip:
        ts.append(RandomHorizontalFlip(0.5, flip_label_map))
    if color_jitter:
        cj = (color_jitter,) * 3 + (0.0,) if isinstance(color_jitter, (int, float)) else tuple(color_jitter)
        ts.append(ColorJitter(*cj))
    if randaugment:
        ts.append(RandAugment(*randaugment))
    if erase_prob > 0:
        ts.append(RandomErasing(erase_prob))
    ts.append(Normalize(mean, std, channel_order, value_range))
    return Compose(ts)


def test_transform(
    input_size: int,
    mean,
    std,
    channel_order: str = "RGB",
    value_range: float = 1.0,
    resize: int | None = None,
    crops: int = 1,
) -> Compose:
    """Evaluation pipeline: short side -> ``resize`` (default ``input_size*256//224``), then 1 centre
    crop, 3 crops along the long side (TSM full-res sampling) or 10 crops (corners + centre +
    flips), then normalise. Multi-crop output is ``(crops, C, T, H, W)``."""
    crop_t = {1: CenterCrop, 3: ThreeCrop, 10: TenCrop}.get(crops)
    if crop_t is None:
        raise ValueError(f"crops must be 1, 3 or 10, got {crops!r}")
    resize = resize or input_size * 256 // 224
    return Compose(
        [ShortSideResize(resize), crop_t(input_size), Normalize(mean, std, channel_order, value_range)]
    )


test_transform.__test__ = False  # not a pytest test when imported into test modules


def detection_transform(
    short_side: int,
    mean,
    std,
    channel_order: str = "RGB",
    value_range: float = 1.0,
    train: bool = False,
    flip: bool = True,
) -> Compose:
    """AVA-style box-aware pipeline: short side -> ``short_side`` (whole frame kept, boxes scaled),
    random horizontal flip when training (boxes mirrored), normalise."""
    ts: list = [ShortSideResize(short_side)]
    if train and flip:
        ts.append(RandomHorizontalFlip(0.5))
    ts.append(Normalize(mean, std, channel_order, value_range))
    return Compose(ts)
