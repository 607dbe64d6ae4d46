"""2D ResNet-18/34/50/101 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)
with a temporal-layer slot in every block, for TSN / TSM / GSM / SIFA.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``, ``fc``),
so torchvision ImageNet state dicts load; temporal layers add keys only under
``layerX.Y.temporal_{in,mid,out}.*``. Input ``(B*T, 3, H, W)`` (time folded into the batch);
:meth:`ResNet.forward_features` returns ``(B*T', C, H/32, W/32)`` (``T' = T/2`` with the TSM
temporal pool).

Temporal slot positions (chosen when the network is built; docs/architecture.md):
``"input"``  residual branch input, before ``conv1`` (TSM residual shift, the default);
``"block"``  block input, identity path included (TSM in-place shift);
``"conv1"``  after ``conv1``, before ``bn1`` (GSM on ResNet);
``"conv2"``  after ``relu(bn2(conv2))``, before ``conv3`` (SIFA).

A second, independent slot after the block's output (``non_local`` at ``non_local_blocks``) takes
clip-level layers such as the non-local block of TSM-NL (keys ``layerX.Y.non_local.*``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import CheckpointError
from kinetix.layers.temporal import GateShift, InterFrameAttention, NonLocal3D, TemporalShift
from kinetix.utils.state_dict import read_state_dict

# (channels, num_frames) -> temporal layer
TemporalFactory = Callable[[int, int], nn.Module]
POSITIONS = ("input", "block", "conv1", "conv2")


def _slots(temporal: nn.Module | None, position: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    if position not in POSITIONS:
        raise ValueError(f"temporal position must be one of {POSITIONS}, got {position!r}")
    t = temporal if temporal is not None else nn.Identity()
    ident = nn.Identity
    return (
        t if position in ("input", "block") else ident(),
        t if position == "conv1" else ident(),
        t if position == "conv2" else ident(),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes, planes, stride=1, downsample=None, temporal=None, position="input", post=None
    ):
        super().__init__()
        if position == "conv2":
            raise ValueError("BasicBlock has no 'conv2' temporal slot")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.temporal_in, self.temporal_mid, _ = _slots(temporal, position)
        self.shift_identity = position == "block"
        self.fused_shift = position == "input" and isinstance(temporal, TemporalShift)
        self.non_local = post  # clip-level layer on the block output (TSM-NL), or None

    @staticmethod
    def temporal_channels(inplanes: int, planes: int, position: str) -> int:
        return inplanes if position in ("input", "block") else planes

    def _post(self, out):
        return out if self.non_local is None else self.non_local(out)

    def _conv1(self, x):
        """(conv1(temporal(x)), identity input); a residual TSM shift is done in place at inference."""
        if self.fused_shift:
            return self.temporal_in.apply_to(self.conv1, x), x
        xt = self.temporal_in(x)
        return self.conv1(xt), (xt if self.shift_identity else x)

    def forward(self, x):
        out, identity = self._conv1(x)
        out = self.relu(self.bn1(self.temporal_mid(out)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(identity)
        return self._post(self.relu(out + identity))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes, planes, stride=1, downsample=None, temporal=None, position="input", post=None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.temporal_in, self.temporal_mid, self.temporal_out = _slots(temporal, position)
        self.shift_identity = position == "block"
        self.fused_shift = position == "input" and isinstance(temporal, TemporalShift)
        self.non_local = post

    @staticmethod
    def temporal_channels(inplanes: int, planes: int, position: str) -> int:
        return inplanes if position in ("input", "block") else planes

    _conv1, _post = BasicBlock._conv1, BasicBlock._post

    def forward(self, x):
        out, identity = self._conv1(x)
        out = self.relu(self.bn1(self.temporal_mid(out)))
        out = self.temporal_out(self.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(identity)
        return self._post(self.relu(out + identity))


class TemporalMaxPool(nn.Module):
    """TSM temporal pool: max over 3 frames, stride 2. ``(B*T, C, H, W) -> (B*T/2, C, H, W)``."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x):
        nt, c, h, w = x.shape
        x5 = x.view(nt // self.num_frames, self.num_frames, c, h, w).transpose(1, 2)  # (B, C, T, H, W)
        y = F.max_pool3d(x5, (3, 1, 1), (2, 1, 1), (1, 0, 0))  # (B, C, T/2, H, W)
        return y.transpose(1, 2).reshape(-1, c, h, w)


class ResNet(nn.Module):
    """torchvision-layout ResNet with per-block temporal slots.

    Args:
        block, layers: ``BasicBlock``/``Bottleneck`` and blocks per stage.
        num_classes: ImageNet head size (0: no ``fc``, features only).
        num_frames: frames T folded into the batch (given to temporal layers).
        temporal: factory ``(channels, num_frames) -> nn.Module`` or ``None`` (plain 2D ResNet).
        temporal_position: slot, see module docstring.
        temporal_every, temporal_first: temporal layers go in blocks ``i >= temporal_first`` with
            ``(i - temporal_first) % temporal_every == 0`` of each stage.
        temporal_stages: stages (1..4) that get temporal layers.
        temporal_pool: TSM temporal max-pool before ``layer2`` (T -> T/2 for layers 2-4).
        non_local: factory ``(channels, num_frames) -> nn.Module`` of a clip-level layer applied to
            the output of the blocks in ``non_local_blocks`` (stage -> block indices), e.g. TSM-NL's
            :class:`~kinetix.layers.temporal.NonLocal3D` at ``{2: (0, 2), 3: (0, 2, 4)}``.
        base_width: channels of the stem (64 in the paper; tiny test models use 8-16).
        small_input: 3x3 stride-1 stem without max-pool (CIFAR-style), for inputs of <= 64 px.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        num_classes: int = 1000,
        num_frames: int = 8,
        temporal: TemporalFactory | None = None,
        temporal_position: str = "input",
        temporal_every: int = 1,
        temporal_first: int = 0,
        temporal_stages: tuple[int, ...] = (1, 2, 3, 4),
        temporal_pool: bool = False,
        non_local: TemporalFactory | None = None,
        non_local_blocks: dict[int, tuple[int, ...]] | None = None,
        base_width: int = 64,
        zero_init_residual: bool = False,
        small_input: bool = False,
    ):
        super().__init__()
        self.num_frames = num_frames
        self.inplanes = base_width
        if small_input:  # CIFAR-style stem for tiny inputs (<= 64 px): 3x3 stride 1, no max-pool
            self.conv1 = nn.Conv2d(3, base_width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.temporal_pool = TemporalMaxPool(num_frames) if temporal_pool else nn.Identity()
        frames = num_frames
        for i, n in enumerate(layers, start=1):
            if i == 2 and temporal_pool:
                frames = num_frames // 2
            factory = temporal if i in temporal_stages else None
            post = (non_local, (non_local_blocks or {}).get(i, ())) if non_local is not None else (None, ())
            stage = self._make_layer(
                block, base_width * 2 ** (i - 1), n, 1 if i == 1 else 2, frames, factory,
                temporal_position, temporal_every, temporal_first, post,
            )  # fmt: skip
            self.add_module(f"layer{i}", stage)
        self.num_features = self.inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block, planes, blocks, stride, frames, temporal, position, every, first, post=(None, ())
    ):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        out = []
        for i in range(blocks):
            t = None
            if temporal is not None and i >= first and (i - first) % every == 0:
                t = temporal(block.temporal_channels(self.inplanes, planes, position), frames)
            p = post[0](planes * block.expansion, frames) if i in post[1] else None
            out.append(
                block(
                    self.inplanes,
                    planes,
                    stride if i == 0 else 1,
                    downsample if i == 0 else None,
                    t,
                    position,
                    p,
                )
            )
            self.inplanes = planes * block.expansion
        return nn.Sequential(*out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B*T, 3, H, W) -> (B*T', C, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.temporal_pool(self.layer1(x)))
        return self.layer4(self.layer3(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.forward_features(x)).flatten(1))


_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}  # fmt: skip


def resnet(depth: int, **kwargs) -> ResNet:
    """ResNet-``depth`` (18, 34, 50, 101) with torchvision names; kwargs go to :class:`ResNet`."""
    if depth not in _DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
    block, layers = _DEPTHS[depth]
    return ResNet(block, layers, **kwargs)


def temporal_prefixes(model: nn.Module) -> list[str]:
    """Module prefixes of layers absent from 2D ImageNet weights: temporal layers and modules
    flagged ``video_only = True`` (e.g. SIFA-Net's global-context FCs and second res5 path)."""
    kinds = (GateShift, InterFrameAttention, NonLocal3D, TemporalShift)
    return [
        n + "."
        for n, m in model.named_modules()
        if n and (isinstance(m, kinds) or getattr(m, "video_only", False))
    ]


def load_image_weights(model: nn.Module, path_or_state_dict) -> list[str]:
    """Load 2D ImageNet weights (torchvision ResNet layout or Caffe BN-Inception) into the backbone
    of ``model`` (a recogniser with ``.backbone``, or a backbone itself).

    The file's classifier (``fc.*``) is dropped. Every other backbone key must be in the file
    except those of temporal layers (GSM, SIFA; TSN/TSM have none, so they load strictly);
    otherwise a :class:`CheckpointError` lists the offending keys. A backbone may define
    ``image_filter_fn(state_dict)`` to adapt 2D weights (e.g. inflate a 3D stem).
    Returns the keys left at their initial values (all temporal).
    """

    backbone = getattr(model, "backbone", model)
    is_file = not isinstance(path_or_state_dict, dict)
    sd = read_state_dict(path_or_state_dict) if is_file else path_or_state_dict
    head = ("fc.", "last_linear.")  # torchvision / Caffe BN-Inception (yaml or Cadene) classifier
    sd = {
        k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith(head)
    }
    fn = getattr(backbone, "image_filter_fn", None)
    if fn is not None:
        sd = fn(sd)
    own = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    # Caffe converters store BN vectors as (1, C): same values, other shape
    sd = {k: v.reshape(own[k].shape) if k in own and v.shape != own[k].shape and v.numel() == own[k].numel() else v
          for k, v in sd.items()}  # fmt: skip
    extra = tuple(temporal_prefixes(backbone))
    # BN batch counters are bookkeeping: files converted from Caffe (2017) do not carry them
    missing = sorted(k for k in set(own) - set(sd) if not k.endswith(".num_batches_tracked"))
    bad = [k for k in missing if not k.startswith(extra)]
    unexpected = sorted(set(sd) - set(own))
    shape = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if unexpected or bad or shape:
        raise CheckpointError(
            f"{path_or_state_dict if is_file else 'state dict'}: not 2D ImageNet weights for "
            f"{type(backbone).__name__}: "
            + (f"unexpected keys {unexpected[:8]}; " if unexpected else "")
            + (f"missing non-temporal keys {bad[:8]}; " if bad else "")
            + (f"shape mismatch {shape[:8]}; " if shape else "")
            + getattr(
                backbone,
                "image_weights_hint",
                "use torchvision ResNet / Caffe BN-Inception ImageNet weights of the same depth and width.",
            )
        )
    backbone.load_state_dict(sd, strict=False)
    return missing


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ResNet) -> dict[str, torch.Tensor]:
    """torchvision ResNet files already match; strip a DataParallel ``module.`` prefix."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
