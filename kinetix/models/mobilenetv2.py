"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018)
with a temporal-layer slot in its inverted residual blocks, the backbone of TSM's online demo
(Lin et al., "TSM: Temporal Shift Module for Efficient Video Understanding", ICCV 2019).

As released by the TSM authors, a temporal layer goes in every inverted residual block that has both
an identity path and an expansion layer (10 of the 17 blocks, ``features.3, 5, 6, 8, 9, 10, 12, 13,
15, 16``): the shift acts on the block input before the first 1x1 conv, and the identity adds the
unshifted input (``x + conv(shift(x))``). The online (causal) shift moves the first ``C/8``
channels from the previous frame only.

Parameter names are torchvision's (``features.0.0``, ``features.N.conv.0.0`` ...,
``features.18.1``, ``classifier.1``), so torchvision ImageNet weights load; a temporal shift has no
parameters and adds no keys. Input ``(B*T, 3, H, W)`` (time folded into the batch);
:meth:`MobileNetV2.forward_features` returns ``(B*T, 1280, H/32, W/32)``.

:func:`convert_official` maps the TSM repository's layouts (offline ``module.base_model.features...``
with ``.net`` on shifted convs and ``new_fc``; the online demo's plain ``features.N.conv.M`` +
``classifier``) onto kinetix recogniser names.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn as nn

from kinetix.errors import CheckpointError
from kinetix.layers.temporal import TemporalShift

__all__ = ["InvertedResidual", "MobileNetV2", "convert_official", "make_divisible"]

# expansion t, output channels c, blocks n, first stride s (Table 2 of the paper)
_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

TemporalFactory = Callable[[int, int], nn.Module]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% below ``v`` (torchvision rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNReLU(nn.Sequential):
    """conv -> BN -> ReLU6 (keys ``.0``, ``.1``)."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion (if ``expand_ratio > 1``) -> 3x3 depthwise -> 1x1 linear projection, plus the
    identity when the shape is kept. ``temporal`` (only where there is an identity and an expansion)
    acts on the input of the branch: ``x + conv(temporal(x))``."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, temporal: nn.Module | None = None):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [ConvBNReLU(inp, hidden, 1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        if temporal is not None and not (self.use_res_connect and expand_ratio != 1):
            raise ValueError("a temporal layer needs a block with an identity path and an expansion layer")
        self.temporal_in = temporal if temporal is not None else nn.Identity()
        # at inference the shift is done in place in x and undone after the branch (no copy)
        self.fused_shift = isinstance(temporal, TemporalShift)

    @staticmethod
    def takes_temporal(inp: int, oup: int, stride: int, expand_ratio: int) -> bool:
        return stride == 1 and inp == oup and expand_ratio != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_res_connect:
            return self.conv(x)
        if self.fused_shift:
            branch = self.temporal_in.apply_to(self.conv, x)  # x is restored before the sum
            return x + branch
        return x + self.conv(self.temporal_in(x))


class MobileNetV2(nn.Module):
    """torchvision-layout MobileNetV2 with temporal slots.

    Args:
        num_classes: ImageNet head size (0: no classifier, features only).
        num_frames: frames T folded into the batch (given to temporal layers).
        temporal: factory ``(channels, num_frames) -> nn.Module`` put in every block with an identity
            path and an expansion layer, or ``None`` (plain 2D MobileNetV2).
        width_mult: channel multiplier (1.0 in TSM).
        last_channel: width of the last 1x1 conv before ``width_mult`` (1280; tiny CI models use less).
        dropout: dropout of the ImageNet classifier.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        num_frames: int = 8,
        temporal: TemporalFactory | None = None,
        width_mult: float = 1.0,
        last_channel: int = 1280,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.num_frames = num_frames
        inp = make_divisible(32 * width_mult)
        last = make_divisible(last_channel * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, inp, 3, 2)]
        for t, c, n, s in _SETTING:
            oup = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                tl = None
                if temporal is not None and InvertedResidual.takes_temporal(inp, oup, stride, t):
                    tl = temporal(inp, num_frames)
                features.append(InvertedResidual(inp, oup, stride, t, tl))
                inp = oup
        features.append(ConvBNReLU(inp, last, 1))
        self.features = nn.Sequential(*features)
        self.num_features = last
        self.classifier = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
            if num_classes > 0
            else nn.Identity()
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B*T, 3, H, W) -> (B*T, C, H/32, W/32)``."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))

    @staticmethod
    def image_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """2D ImageNet weights -> backbone keys: drop torchvision's classifier (``classifier.1``)."""
        return {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}


# ----------------------------------------------------------------------------------------------
# official TSM layouts
# ----------------------------------------------------------------------------------------------

# tonylins/pytorch-mobilenet-v2 (used by the TSM repo) numbers every module of a block's flat
# Sequential (ReLU6 included); torchvision groups conv+BN+ReLU6. Index maps per block kind:
_FLAT_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_FLAT_NO_EXPAND = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_FLAT_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(?:net\.)?(.+)$")


def _shifted_blocks(backbone: MobileNetV2) -> set[int]:
    return {
        i
        for i, m in enumerate(backbone.features)
        if isinstance(getattr(m, "temporal_in", None), TemporalShift)
    }


def convert_official(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor] | None:
    """TSM-repository MobileNetV2 checkpoints -> names of ``model`` (a recogniser with a
    :class:`MobileNetV2` ``backbone`` and an ``fc``). Returns ``None`` for torchvision-layout 2D
    ImageNet weights (the caller loads those into the backbone only).

    - offline TSM (``TSM_kinetics_RGB_mobilenetv2_shift8_blockres_avg_segment8_e100_dense.pth``):
      ``module.base_model.features.N.conv.M[.net].*`` + ``module.new_fc.*`` (or
      ``base_model.classifier.*`` when trained without dropout). The blocks marked ``.net`` must be
      the model's shifted blocks (TSM weights in a TSN model, or the reverse, are refused).
    - online demo (``mobilenetv2_jester_online.pth.tar``): plain ``features.N.conv.M.*`` +
      ``classifier.*``; load it into an online (causal) model, e.g. ``tsm_mobilenetv2_online``.
      The same flat layout with a 1000-class classifier is the ImageNet file the TSM repository
      starts from: its classifier is dropped and the model's ``fc`` keeps its initialisation.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    backbone = model.backbone
    if any(k.startswith("base_model.") for k in sd):
        marked = {
            int(m.group(1)) for k in sd if (m := re.match(r"^base_model\.features\.(\d+)\.conv\.0\.net\.", k))
        }
        own = _shifted_blocks(backbone)
        if marked != own:
            what = "a TSM checkpoint" if marked else "a checkpoint without temporal shifts (TSN)"
            raise CheckpointError(
                f"{what}: shifted blocks {sorted(marked)} in the checkpoint vs {sorted(own)} in the model. "
                "Use tsm_mobilenetv2 / tsm_mobilenetv2_online for TSM weights."
            )
        sd = {re.sub(r"^base_model\.", "", k): v for k, v in sd.items()}
        head = ("new_fc.", "classifier.")
    elif "features.1.conv.0.weight" in sd:  # flat (tonylins) layout: online demo or TSM's ImageNet file
        head = ("classifier.",)
        w = sd.get("classifier.weight")
        if w is not None and w.shape[0] == 1000 and model.num_classes != 1000:
            sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    else:
        return None  # torchvision layout: 2D ImageNet weights
    out = {}
    for k, v in sd.items():
        m = _FLAT_KEY.match(k)
        if m is not None:
            n, idx, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _FLAT_EXPAND if len(backbone.features[n].conv) == 4 else _FLAT_NO_EXPAND
            if idx not in table:
                raise CheckpointError(f"unexpected key {k!r} for a MobileNetV2 block (not a conv or BN)")
            k = f"features.{n}.conv.{table[idx]}.{rest}"
        for h in head:
            if k.startswith(h):
                k = "fc." + k.removeprefix(h)
                break
        else:
            k = "backbone." + k
        out[k] = v
    own = model.state_dict()
    if "fc.weight" not in out:  # an ImageNet file: keep the model's classifier
        out.update({k: v for k, v in own.items() if k.startswith("fc.")})
    # files saved before PyTorch 0.4.1 carry no BN step counters (unused in eval and by momentum BN)
    out.update({k: v for k, v in own.items() if k.endswith(".num_batches_tracked") and k not in out})
    return out
