"""SIFA-Net (Long et al., "Stand-Alone Inter-Frame Attention in Video Models", CVPR 2022): a C2D
ResNet-50 with deformable inter-frame attention blocks, as in the released training code.

Released structure (``model/c2d_sifa_resnet.py``):
- stem ``Conv3d(3, 64, (4, 7, 7), stride (4, 2, 2))`` -> the residual stages run on ``T/4`` steps;
- res2: plain bottlenecks; res3-res5 alternate a global-context bottleneck (``GBottleneck``: clip-
  pooled ``fc2(relu(fc1(.)))`` added to every position, even index) and a SIFA bottleneck
  (:class:`~kinetix.layers.temporal.InterFrameAttention` between ``conv2`` and ``conv3``, odd index);
- dual head: a second res5 (``layer4_dual``, stride 1, after a temporal max-pool by 2 of the res4
  output) with its own classifier; the two heads are trained with the sum of their cross-entropies
  and evaluated on the average of their softmax outputs.

Input ``(B, 3, T, H, W)`` (RGB, ImageNet mean/std, T a multiple of 8) -> ``forward`` returns
``log(mean(softmax(fc), softmax(fc_dual)))`` ``(B, num_classes)`` — log-probabilities whose softmax
is the released evaluation score; :meth:`SIFANet.forward_dual` returns both heads' logits for the
released training loss. ``sifa_r50_plain`` is a 2D ResNet-50 TSN-style recogniser with SIFA
bottlenecks at the same positions (odd blocks of res3-res5), no temporal-stride stem, no G blocks,
no dual head.
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import CheckpointError
from kinetix.layers.temporal import InterFrameAttention

from ._pretrained import PretrainedCfg
from ._registry import register_model
from .recognizer2d import Recognizer2D, fold_time
from .resnet import Bottleneck, load_image_weights, resnet

__all__ = ["GBottleneck", "SIFANet"]


class GBottleneck(Bottleneck):
    """Bottleneck + global context: ``relu(bn3(...) + identity + fc2(relu(fc1(pool_THW(bn3(...))))))``."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, num_frames=4):
        super().__init__(inplanes, planes, stride, downsample)
        c = planes * 4
        self.num_frames = num_frames
        self.fc1, self.fc2 = nn.Linear(c, c // 16), nn.Linear(c // 16, c)
        self.fc1.video_only = self.fc2.video_only = True  # not in 2D ImageNet weights

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # (B*T, C, H, W)
        nt, c = out.shape[:2]
        pooled = out.mean((2, 3)).view(nt // self.num_frames, self.num_frames, c).mean(1)  # (B, C)
        gc = self.fc2(F.relu(self.fc1(pooled)))  # (B, C)
        gc = gc.repeat_interleave(self.num_frames, 0)[:, :, None, None]  # (B*T, C, 1, 1)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity + gc)


class SIFANet(nn.Module):
    """Released SIFA-Net (ResNet-50 layout by default; ``base_width``/``layers`` shrink it for tests)."""

    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 16,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        base_width: int = 64,
        kernel_size: int = 3,
        dropout: float = 0.5,
        dual: bool = True,
    ):
        super().__init__()
        if num_frames % (8 if dual else 4):
            raise ValueError(f"SIFA-Net needs num_frames divisible by {8 if dual else 4}, got {num_frames}")
        self.num_frames, self.num_classes, self.dual = num_frames, num_classes, dual
        t = num_frames // 4  # after the temporal-stride-4 stem
        self.conv1 = nn.Conv3d(3, base_width, (4, 7, 7), (4, 2, 2), (0, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)  # same keys as the released BatchNorm3d
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)  # == MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.inplanes = base_width
        self.layer1 = self._make_layer(base_width, layers[0], 1, t, sifa=False, kernel_size=kernel_size)
        self.layer2 = self._make_layer(base_width * 2, layers[1], 2, t, kernel_size=kernel_size)
        self.layer3 = self._make_layer(base_width * 4, layers[2], 2, t, kernel_size=kernel_size)
        res4_in = self.inplanes
        self.layer4 = self._make_layer(base_width * 8, layers[3], 2, t, kernel_size=kernel_size)
        self.num_features = self.inplanes
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        if dual:
            self.inplanes = res4_in
            self.layer4_dual = self._make_layer(base_width * 8, layers[3], 1, t // 2, kernel_size=kernel_size)
            self.layer4_dual.video_only = True  # initialised from layer4 by load_image_weights
            self.fc_dual = nn.Linear(self.num_features, num_classes)
            self.fc_dual.video_only = True
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, Bottleneck):  # zero_init_residual, as released
                nn.init.zeros_(m.bn3.weight)
        for m in self.modules():
            if isinstance(m, InterFrameAttention):
                nn.init.zeros_(m.conv_offset.weight)

    def _make_layer(self, planes, blocks, stride, frames, sifa=True, kernel_size=3):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        out = []
        for i in range(blocks):
            ds, s = (downsample, stride) if i == 0 else (None, 1)
            if not sifa:
                out.append(Bottleneck(self.inplanes, planes, s, ds))
            elif i % 2 == 0:
                out.append(GBottleneck(self.inplanes, planes, s, ds, num_frames=frames))
            else:
                attn = InterFrameAttention(planes, frames, kernel_size)
                out.append(Bottleneck(self.inplanes, planes, s, ds, attn, position="conv2"))
            self.inplanes = planes * 4
        return nn.Sequential(*out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W) -> (B, 2, D)``: clip-pooled features of the res5 and dual-res5 paths
        (``(B, 1, D)`` without the dual path)."""
        b = x.shape[0]
        x = self.bn1(fold_time(self.conv1(x)))  # (B*T/4, C, H/2, W/2)
        x = self.layer3(self.layer2(self.layer1(self.maxpool(self.relu(x)))))  # (B*T', C, h, w)
        feats = [self.layer4(x).mean((2, 3)).view(b, -1, self.num_features).mean(1)]
        if self.dual:
            nt, c, h, w = x.shape
            xd = x.view(b, nt // b // 2, 2, c, h, w).amax(2).view(-1, c, h, w)  # temporal max-pool by 2
            feats.append(self.layer4_dual(xd).mean((2, 3)).view(b, -1, self.num_features).mean(1))
        return torch.stack(feats, 1)  # (B, paths, D)

    def forward_dual(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the res5 head and of the dual head (released loss: sum of both CEs)."""
        f = self.forward_features(x)
        return self.fc(self.drop(f[:, 0])), self.fc_dual(self.drop(f[:, 1]))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.dual:
            return self.fc(self.drop(feats[:, 0]))
        logits = torch.stack([self.fc(self.drop(feats[:, 0])), self.fc_dual(self.drop(feats[:, 1]))], 0)
        return torch.logsumexp(F.log_softmax(logits, -1), 0) - torch.log(torch.tensor(2.0))  # log mean prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        dev = self.fc.weight.device
        self.fc = nn.Linear(self.num_features, num_classes, device=dev)
        if self.dual:
            self.fc_dual = nn.Linear(self.num_features, num_classes, device=dev)

    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def image_filter_fn(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """2D ImageNet ResNet-50 -> SIFA-Net: stem kernel placed at temporal index 2 of 4 (zeros
        elsewhere, as released) and ``layer4_dual`` initialised from ``layer4``."""
        sd = dict(sd)
        w = sd.get("conv1.weight")
        if w is not None and w.dim() == 4:
            w3 = w.new_zeros(w.shape[0], w.shape[1], 4, *w.shape[2:])
            w3[:, :, 2] = w
            sd["conv1.weight"] = w3
        if self.dual:
            sd.update(
                {"layer4_dual" + k[len("layer4") :]: v for k, v in sd.items() if k.startswith("layer4.")}
            )
        return sd


CHECKPOINT_FORMATS = (
    "kinetix weights, released SIFA-Net checkpoints (module.*, conv_offset, def_cor) or 2D ImageNet "
    "ResNet-50 weights (torchvision)"
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Released SIFA-Net checkpoints (``module.`` prefix, 5-D Conv3d weights, ``conv_offset`` and
    the fixed ``def_cor.weight`` (1/C) in SIFA blocks) and 2D ImageNet ResNet-50 files -> kinetix.

    ``def_cor.weight`` is checked to be the constant 1/C the released code fixes, then dropped.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if not any(".conv_offset." in k or ".def_cor." in k for k in sd):
        load_image_weights(model, sd)  # a 2D ImageNet file
        return model.state_dict()
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("def_cor.weight"):
            if not torch.allclose(v, torch.full_like(v, 1.0 / v.shape[0])):
                raise CheckpointError(
                    f"{k}: SIFA correlation weights must be the fixed 1/C, got other values"
                )
            continue
        if isinstance(model, SIFARecognizer2D) and not k.startswith(("backbone.", "fc.")):  # sifa_r50_plain
            k = re.sub(r"^(layer\d\.\d+)\.conv_offset\.", r"\1.temporal_out.conv_offset.", k)
            k = "fc." + k[3:] if k.startswith("fc.") else "backbone." + k
        else:
            k = re.sub(
                r"^(layer4(?:_dual)?|layer\d)\.(\d+)\.conv_offset\.", r"\1.\2.temporal_out.conv_offset.", k
            )
        if k in own and own[k].shape != v.shape and own[k].numel() == v.numel():
            v = v.reshape(own[k].shape)  # Conv3d (O, I, 1, k, k) -> Conv2d (O, I, k, k)
        out[k] = v
    return out


class SIFARecognizer2D(Recognizer2D):
    """``sifa_r50_plain``: a :class:`Recognizer2D` whose converter is this file's."""


_SRC = "https://github.com/FuchenUSTC/SIFA (no weights released)"
_CFG = {
    "k400": PretrainedCfg(num_frames=16, sampling="dense", frame_interval=1, test_resize=224, source=_SRC)
}


@register_model(cfgs=_CFG)
def sifa_r50(num_classes: int = 400, num_frames: int = 16, **kwargs):
    """SIFA-Net (ResNet-50) as released: temporal-stride-4 stem, G/SIFA blocks, dual res5 head."""
    return SIFANet(num_classes, num_frames, **kwargs)


@register_model(cfgs={"": PretrainedCfg(num_frames=8)})
def sifa_r50_plain(
    num_classes: int = 400, num_frames: int = 8, dropout: float = 0.5, kernel_size: int = 3, **kwargs
):
    """ResNet-50 TSN-style recogniser with SIFA bottlenecks at odd blocks of res3-res5."""
    backbone = resnet(
        50, num_classes=0, num_frames=num_frames, temporal=functools.partial(InterFrameAttention, kernel_size=kernel_size),
        temporal_position="conv2", temporal_every=2, temporal_first=1, temporal_stages=(2, 3, 4), **kwargs,
    )  # fmt: skip
    return SIFARecognizer2D(backbone, num_classes, num_frames, dropout)


@register_model(
    cfgs={"synthetic": PretrainedCfg(num_frames=8, input_size=64, num_classes=10, test_resize=64)}
)
def test_sifa(num_classes: int = 10, num_frames: int = 8, **kwargs):
    """Tiny released-structure SIFA-Net for CI (width 8, G+S blocks in res3-res5, dual head)."""
    return SIFANet(num_classes, num_frames, layers=(1, 2, 2, 2), base_width=8, **kwargs)
