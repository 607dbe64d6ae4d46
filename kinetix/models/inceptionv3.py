"""Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR
2016), the backbone of the official GSM Something-V1 results (Sudhakaran et al., "Gate-Shift
Networks for Video Action Recognition", CVPR 2020), with a temporal slot in every conv unit.

Parameter names are torchvision's (``Conv2d_1a_3x3.conv`` / ``.bn``, ``Mixed_5b.branch1x1``,
``Mixed_7c.branch3x3dbl_3b``, ...; no auxiliary classifier: video models do not use it), so
torchvision ImageNet files load (their ``AuxLogits.*`` keys are dropped). A temporal layer sits
between a unit's conv and its BN under ``<unit>.temporal`` (conv -> [temporal] -> BN -> ReLU).

Two variants of the same network:

* ``variant="cuhk"`` (default; the network GSM trains and releases): the Caffe Inception-v3 that
  TSN/GSM initialise from (``inceptionv3-cuhk`` ImageNet weights, ``inceptionv3_gsm.yaml``) —
  convolutions with bias, BN eps 1e-5, every asymmetric kernel transposed with respect to
  torchvision (``Mixed_6b.branch7x7_2`` is 7x1, ``Mixed_7b.branch3x3_2a`` is 3x1, ...), a max pool
  in ``Mixed_7c``'s pool branch, ceil-mode stride-2 pools. Input 229 (the official size; the global
  pool is an average over the 6x6 map), **BGR, 0..255, mean (104, 117, 128)**.
* ``variant="torchvision"``: torchvision's ``inception_v3`` (no conv bias, BN eps 1e-3, floor-mode
  pools, average pools everywhere); its ImageNet weights expect RGB in [-1, 1] (mean = std = 0.5).

``temporal="gsm"`` puts a Gate-Shift module in the 10 official positions (``inceptionv3_gsm.yaml``,
after the first 1x1 conv of one branch of every block but ``Mixed_6d``): ``Mixed_5b/5c/5d/6b/6c/6e/
7b/7c.branch1x1``, ``Mixed_6a.branch3x3dbl_1``, ``Mixed_7a.branch3x3_1``.

Input ``(B*T, 3, H, W)``; :meth:`InceptionV3.forward_features` returns ``(B*T, 2048, h, w)``
(6x6 at 229, 8x8 at 299).
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.layers.temporal import GateShift

__all__ = ["GSM_POSITIONS", "InceptionV3", "official_key"]

# the 10 GSM positions of the official inceptionv3_gsm.yaml, in torchvision names
GSM_POSITIONS = (
    "Mixed_5b.branch1x1", "Mixed_5c.branch1x1", "Mixed_5d.branch1x1", "Mixed_6a.branch3x3dbl_1",
    "Mixed_6b.branch1x1", "Mixed_6c.branch1x1", "Mixed_6e.branch1x1", "Mixed_7a.branch3x3_1",
    "Mixed_7b.branch1x1", "Mixed_7c.branch1x1",
)  # fmt: skip


class ConvUnit(nn.Module):
    """conv -> [temporal] -> BN -> ReLU (torchvision's ``BasicConv2d`` names: ``conv``, ``bn``)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, *, bias, eps, temporal=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
        self.temporal = temporal
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.temporal is not None:
            x = self.temporal(x)
        return F.relu(self.bn(x), inplace=True)


class _Block(nn.Module):
    """An Inception block ``Mixed_*``: its units are submodules; ``branches`` lists, per output, the
    ops applied to the block input (unit names or pools), concatenated in the torchvision (= official
    yaml) order. Branches that share a prefix (the split 3x3 towers of Mixed_7b/7c) compute it once."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.branches: list[list] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, cache = [], {}
        for ops in self.branches:
            y = x
            for i, op in enumerate(ops):
                key = tuple(ops[: i + 1])
                if key in cache:  # shared stem of the split 3x3 branches (Mixed_7b/7c)
                    y = cache[key]
                    continue
                y = getattr(self, op)(y) if isinstance(op, str) else op(y)
                cache[key] = y
            outs.append(y)
        return torch.cat(outs, 1)


class InceptionV3(nn.Module):
    """Inception-v3 with the GSM temporal slot.

    Args:
        num_classes: ImageNet head size (0: no ``fc``, features only).
        num_frames: frames T folded into the batch (given to temporal layers).
        temporal: ``None`` or ``"gsm"`` (the 10 official GSM positions).
        variant: ``"cuhk"`` (official GSM/TSN Caffe network) or ``"torchvision"``.
        causal: GSM online variant (gate and shifts read only the past).
        width_div: divide every channel count by this (tiny CI models; 1 = the paper's widths).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        num_frames: int = 8,
        temporal: str | None = None,
        variant: str = "cuhk",
        causal: bool = False,
        width_div: int = 1,
    ):
        super().__init__()
        if temporal not in (None, "gsm"):
            raise ValueError(f"temporal must be None or 'gsm', got {temporal!r}")
        if variant not in ("cuhk", "torchvision"):
            raise ValueError(f"variant must be 'cuhk' or 'torchvision', got {variant!r}")
        self.num_frames, self.variant = num_frames, variant
        self.image_weights_hint = (
            "variant='cuhk' takes the Caffe inceptionv3-cuhk file; build the model with "
            "variant='torchvision' for torchvision's inception_v3 weights (and vice versa)."
        )
        cuhk = variant == "cuhk"
        bias, eps = cuhk, (1e-5 if cuhk else 1e-3)

        def c(n: int) -> int:
            return n // width_div

        def k(kh: int, kw: int) -> dict:
            """An asymmetric kernel; the Caffe network has every one transposed."""
            kh, kw = (kw, kh) if cuhk else (kh, kw)
            return dict(kernel=(kh, kw), padding=(kh // 2, kw // 2))

        def unit(parent: nn.Module, name: str, cin: int, cout: int, kernel=1, stride=1, padding=0) -> str:
            """Add a conv unit (with a GSM at the official positions); returns its name."""
            path = f"{parent.path}.{name}" if isinstance(parent, _Block) else name
            gsm = temporal == "gsm" and path in GSM_POSITIONS
            t = GateShift(cout, num_frames, causal=causal) if gsm else None
            parent.add_module(
                name, ConvUnit(cin, cout, kernel, stride, padding, bias=bias, eps=eps, temporal=t)
            )
            return name

        max_s2 = nn.MaxPool2d(3, 2, ceil_mode=cuhk)
        avg_s1 = nn.AvgPool2d(3, 1, 1)  # count_include_pad, as torchvision and the official code
        max_s1 = nn.MaxPool2d(3, 1, 1)

        unit(self, "Conv2d_1a_3x3", 3, c(32), 3, 2)
        unit(self, "Conv2d_2a_3x3", c(32), c(32), 3)
        unit(self, "Conv2d_2b_3x3", c(32), c(64), 3, padding=1)
        unit(self, "Conv2d_3b_1x1", c(64), c(80), 1)
        unit(self, "Conv2d_4a_3x3", c(80), c(192), 3)
        self._stem = [
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            max_s2,
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            max_s2,
        ]

        def block(name: str) -> _Block:
            self.add_module(name, _Block(name))
            return getattr(self, name)

        cin = c(192)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):  # InceptionA
            b = block(name)
            b.branches = [
                [unit(b, "branch1x1", cin, c(64))],
                [unit(b, "branch5x5_1", cin, c(48)), unit(b, "branch5x5_2", c(48), c(64), 5, padding=2)],
                [unit(b, "branch3x3dbl_1", cin, c(64)), unit(b, "branch3x3dbl_2", c(64), c(96), 3, padding=1),
                 unit(b, "branch3x3dbl_3", c(96), c(96), 3, padding=1)],
                [avg_s1, unit(b, "branch_pool", cin, c(pool_features))],
            ]  # fmt: skip
            cin = c(64) + c(64) + c(96) + c(pool_features)
        b = block("Mixed_6a")  # InceptionB
        b.branches = [
            [unit(b, "branch3x3", cin, c(384), 3, 2)],
            [unit(b, "branch3x3dbl_1", cin, c(64)), unit(b, "branch3x3dbl_2", c(64), c(96), 3, padding=1),
             unit(b, "branch3x3dbl_3", c(96), c(96), 3, 2)],
            [max_s2],
        ]  # fmt: skip
        cin = c(384) + c(96) + cin
        for name, c7 in (
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ):  # InceptionC
            b = block(name)
            b.branches = [
                [unit(b, "branch1x1", cin, c(192))],
                [unit(b, "branch7x7_1", cin, c(c7)), unit(b, "branch7x7_2", c(c7), c(c7), **k(1, 7)),
                 unit(b, "branch7x7_3", c(c7), c(192), **k(7, 1))],
                [unit(b, "branch7x7dbl_1", cin, c(c7)), unit(b, "branch7x7dbl_2", c(c7), c(c7), **k(7, 1)),
                 unit(b, "branch7x7dbl_3", c(c7), c(c7), **k(1, 7)), unit(b, "branch7x7dbl_4", c(c7), c(c7), **k(7, 1)),
                 unit(b, "branch7x7dbl_5", c(c7), c(192), **k(1, 7))],
                [avg_s1, unit(b, "branch_pool", cin, c(192))],
            ]  # fmt: skip
            cin = 4 * c(192)
        b = block("Mixed_7a")  # InceptionD
        b.branches = [
            [unit(b, "branch3x3_1", cin, c(192)), unit(b, "branch3x3_2", c(192), c(320), 3, 2)],
            [unit(b, "branch7x7x3_1", cin, c(192)), unit(b, "branch7x7x3_2", c(192), c(192), **k(1, 7)),
             unit(b, "branch7x7x3_3", c(192), c(192), **k(7, 1)), unit(b, "branch7x7x3_4", c(192), c(192), 3, 2)],
            [max_s2],
        ]  # fmt: skip
        cin = c(320) + c(192) + cin
        for name in ("Mixed_7b", "Mixed_7c"):  # InceptionE (units created in torchvision's order)
            b = block(name)
            pool = max_s1 if cuhk and name == "Mixed_7c" else avg_s1
            u = [
                unit(b, "branch1x1", cin, c(320)),
                unit(b, "branch3x3_1", cin, c(384)),
                unit(b, "branch3x3_2a", c(384), c(384), **k(1, 3)),
                unit(b, "branch3x3_2b", c(384), c(384), **k(3, 1)),
                unit(b, "branch3x3dbl_1", cin, c(448)),
                unit(b, "branch3x3dbl_2", c(448), c(384), 3, padding=1),
                unit(b, "branch3x3dbl_3a", c(384), c(384), **k(1, 3)),
                unit(b, "branch3x3dbl_3b", c(384), c(384), **k(3, 1)),
                unit(b, "branch_pool", cin, c(192)),
            ]
            b.branches = [
                [u[0]],
                [u[1], u[2]],
                [u[1], u[3]],
                [u[4], u[5], u[6]],
                [u[4], u[5], u[7]],
                [pool, u[8]],
            ]
            cin = c(320) + 4 * c(384) + c(192)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-2, b=2)  # torchvision's init
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B*T, 3, H, W) -> (B*T, 2048, h, w)``."""
        for op in self._stem:
            x = getattr(self, op)(x) if isinstance(op, str) else op(x)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):  # fmt: skip
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1))

    @staticmethod
    def official_key(key: str) -> str | None:
        """Official GSM/TSN id -> torchvision name (see :func:`official_key`)."""
        return official_key(key)

    def image_filter_fn(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """2D ImageNet files -> these names: torchvision (drop ``AuxLogits.*``) or the Caffe
        ``inceptionv3-cuhk`` file (official ids, ``top_cls_fc`` classifier dropped)."""
        out = {}
        for k, v in state_dict.items():
            if k.startswith(("AuxLogits.", "top_cls_fc.")):
                continue
            out[official_key(k) or k] = v
        return out


# ---- official (Caffe yaml) ids -> torchvision names ----------------------------------------------
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}  # fmt: skip
_BLOCKS = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
           "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]  # official mixed, mixed_1 ... mixed_10  # fmt: skip
_A = {"conv": "branch1x1", "tower_conv": "branch5x5_1", "tower_conv_1": "branch5x5_2",
      "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_conv_2": "branch3x3dbl_3", "tower_2_conv": "branch_pool"}  # fmt: skip
_B = {"conv": "branch3x3", "tower_conv": "branch3x3dbl_1", "tower_conv_1": "branch3x3dbl_2",
      "tower_conv_2": "branch3x3dbl_3"}  # fmt: skip
_C = {"conv": "branch1x1", "tower_conv": "branch7x7_1", "tower_conv_1": "branch7x7_2",
      "tower_conv_2": "branch7x7_3", "tower_2_conv": "branch_pool",
      **{f"tower_1_conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}}  # fmt: skip
_D = {"tower_conv": "branch3x3_1", "tower_conv_1": "branch3x3_2", "tower_1_conv": "branch7x7x3_1",
      "tower_1_conv_1": "branch7x7x3_2", "tower_1_conv_2": "branch7x7x3_3", "tower_1_conv_3": "branch7x7x3_4"}  # fmt: skip
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}  # fmt: skip
_KIND = [_A, _A, _A, _B, _C, _C, _C, _C, _D, _E, _E]
_UNITS = dict(_STEM)
for _i, (_blk, _kind) in enumerate(zip(_BLOCKS, _KIND)):
    _UNITS.update({f"mixed{'_' + str(_i) if _i else ''}_{o}": f"{_blk}.{t}" for o, t in _kind.items()})
_UNIT_KEY = re.compile(r"^(\w+?)_(Conv2D|batchnorm)\.(\w+)$")
_GSM_KEY = re.compile(r"^gsm_(\w+?)_Conv2D\.(conv3D|bn)\.(\w+)$")


def official_key(key: str) -> str | None:
    """Official GSM/TSN Inception-v3 id (``mixed_4_tower_conv_1_Conv2D.weight``,
    ``mixed_4_conv_batchnorm.running_mean``, ``gsm_mixed_conv_Conv2D.conv3D.weight``) -> the
    torchvision name used here (``Mixed_6b.branch7x7_2.conv.weight``, ``Mixed_6b.branch1x1.bn.
    running_mean``, ``Mixed_5b.branch1x1.temporal.conv3D.weight``); ``None`` for any other key."""
    if (m := _GSM_KEY.match(key)) and m[1] in _UNITS:
        return f"{_UNITS[m[1]]}.temporal.{m[2]}.{m[3]}"
    if (m := _UNIT_KEY.match(key)) and m[1] in _UNITS:
        return f"{_UNITS[m[1]]}.{'conv' if m[2] == 'Conv2D' else 'bn'}.{m[3]}"
    return None
