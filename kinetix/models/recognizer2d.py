"""2D-CNN video recognisers: TSN, TSM (offline and online/streaming) and GSM.

- TSN: Wang et al., "Temporal Segment Networks", ECCV 2016 — a 2D backbone per frame, dropout,
  a linear classifier per frame and the average of the frame logits (consensus).
- TSM: Lin et al., "TSM: Temporal Shift Module for Efficient Video Understanding", ICCV 2019 —
  TSN with a zero-cost temporal shift in the residual branch of every block
  (:class:`~kinetix.layers.temporal.TemporalShift`); online TSM shifts only from the past and runs
  frame by frame through :class:`StreamingRecognizer`. Backbones: ResNet, BN-Inception and
  MobileNetV2 (``tsm_mobilenetv2[_online]``, the official online demo's model).
- GSM: Sudhakaran et al., "Gate-Shift Networks for Video Action Recognition", CVPR 2020 — on
  BN-Inception, Inception-v3 (the backbone of the official Something-V1 results) and ResNet-50.
- TSM + non-local: TSM ResNet-50 with embedded-Gaussian non-local blocks (Wang et al., "Non-local
  Neural Networks", CVPR 2018) after res3 blocks 0, 2 and res4 blocks 0, 2, 4, as released.

Input ``(B, C, T, H, W)`` -> logits ``(B, num_classes)``; time is folded into the batch,
``(B*T, C, H, W)``, for the backbone.
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn as nn

from kinetix.errors import CheckpointError
from kinetix.layers.partial_bn import set_partial_bn
from kinetix.layers.temporal import GateShift, NonLocal3D, TemporalShift

from ._pretrained import BNINCEPTION_MEAN, BNINCEPTION_STD, PretrainedCfg
from ._registry import register_model
from .bninception import BNInception
from .inceptionv3 import InceptionV3
from .mobilenetv2 import MobileNetV2, convert_official
from .resnet import BasicBlock, Bottleneck, ResNet, TemporalMaxPool, load_image_weights, resnet

__all__ = ["Recognizer2D", "StreamingRecognizer", "fold_time"]


def fold_time(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``(B, C, T, H, W) -> (B*T, C, H, W)`` in one copy (channels_last layout if asked)."""
    b, c, t, h, w = x.shape
    if channels_last:  # (B, T, H, W, C) memory order
        return x.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    return x.transpose(1, 2).reshape(b * t, c, h, w)


class Recognizer2D(nn.Module):
    """TSN-style recogniser around a 2D backbone with ``forward_features`` and ``num_features``.

    Args:
        backbone: maps ``(B*T, 3, H, W) -> (B*T', C, h, w)`` (``T' < T`` with temporal pooling).
        num_classes: classifier size.
        dropout: dropout before the per-frame classifier (TSM/GSM scripts: 0.5).
        partial_bn: TSN partial BN — in ``train()``, every BatchNorm but the first is frozen.
        channels_last: run the backbone in channels_last memory format.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 400,
        num_frames: int = 8,
        dropout: float = 0.5,
        partial_bn: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_frames, self.num_classes = num_frames, num_classes
        self.num_features = backbone.num_features
        self.partial_bn, self.channels_last = partial_bn, channels_last
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_fc()
        if channels_last:  # 4-D conv weights only (GSM / non-local Conv3d weights are 5-D)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.to(memory_format=torch.channels_last)

    def _init_fc(self):
        nn.init.normal_(self.fc.weight, 0, 0.001)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, T', D)`` pooled per-frame features."""
        feats = self.backbone.forward_features(fold_time(x, self.channels_last))  # (B*T', D, h, w)
        return self.pool(feats, x.shape[0])

    def pool(self, maps: torch.Tensor, batch: int) -> torch.Tensor:
        """Global average pool of the backbone's maps: ``(B*T', D, h, w) -> (B, T', D)``."""
        return maps.mean((2, 3)).view(batch, -1, self.num_features)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame logits before the consensus: ``(B, C, T, H, W) -> (B, T', num_classes)``."""
        return self.fc(self.head_drop(self.forward_features(x)))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, T', D) -> (B, num_classes)``: average of the frame logits."""
        return self.fc(self.head_drop(feats)).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, device=self.fc.weight.device)
        self._init_fc()

    def no_weight_decay(self) -> set[str]:
        """Biases and norm parameters (TSN/TSM optimiser policy: weight decay 0)."""
        norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
        out = set()
        for mn, m in self.named_modules():
            for pn, _ in m.named_parameters(recurse=False):
                if isinstance(m, norms) or pn == "bias":
                    out.add(f"{mn}.{pn}" if mn else pn)
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        if self.partial_bn and mode:
            set_partial_bn(self.backbone)
        return self


class StreamingRecognizer(nn.Module):
    """Online recognition with a causal model: one frame in, that frame's logits out.

    ``model`` is a :class:`Recognizer2D` whose temporal layers are all causal (``tsm_r50_online``,
    ``test_tsm_online``, GSM built with ``causal=True``). Each temporal layer keeps a cache of the
    previous frame (TSM: its first ``C/8`` channels), so the per-frame cost is one 2D frame plus
    a few small copies. ``forward(frame)`` with ``frame`` ``(B, C, H, W)`` returns ``(B, num_classes)``
    equal to frame t's logits of the causal model run on the whole clip (``model.forward_frames``).
    Call :meth:`reset` between videos.
    """

    def __init__(self, model: Recognizer2D):
        super().__init__()
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, TemporalShift | GateShift)]
        if any(isinstance(m, NonLocal3D) for m in model.modules()):
            raise ValueError(
                "streaming is not possible with non-local blocks: they attend over the whole clip, "
                "future frames included (there is no online TSM-NL)"
            )
        acausal = [
            n for n, m in model.named_modules() if isinstance(m, TemporalShift | GateShift) and not m.causal
        ]
        if acausal:
            raise ValueError(
                f"streaming needs a causal model (e.g. tsm_r50_online); non-causal temporal layers: {acausal[:4]}"
            )
        if any(isinstance(m, TemporalMaxPool) for m in model.modules()):
            raise ValueError("streaming is not possible with temporal pooling (temporal_pool=True)")
        self.reset()

    def reset(self) -> None:
        """Forget the past (start of a new video / new batch of streams)."""
        for m in self.layers:
            m.cache = None

    @torch.no_grad()
    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, num_classes)``."""
        m = self.model
        if m.channels_last:
            frame = frame.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            layer.streaming = True
        try:
            feats = m.backbone.forward_features(frame).mean((2, 3))  # (B, D)
        finally:
            for layer in self.layers:
                layer.streaming = False
        return m.fc(m.head_drop(feats))


# ----------------------------------------------------------------------------------------------
# converters
# ----------------------------------------------------------------------------------------------

_MM_RESNET = [  # mmaction2 ResNet (ConvModule) -> torchvision names
    (r"^backbone\.conv1\.conv\.", "backbone.conv1."),
    (r"^backbone\.conv1\.bn\.", "backbone.bn1."),
    (r"\.conv(\d)\.conv\.net\.", r".conv\1.net."),
    (r"\.conv(\d)\.conv\.", r".conv\1."),
    (r"\.conv(\d)\.bn\.", r".bn\1."),
    (r"\.downsample\.conv\.", ".downsample.0."),
    (r"\.downsample\.bn\.", ".downsample.1."),
    (r"^cls_head\.fc_cls\.", "fc."),
    # mmcv NonLocal3d in mmaction2's NL3DWrapper (``non_local_block``; ``conv_out`` has no bias)
    (r"\.non_local_block\.(g|phi)\.0\.conv\.", r".non_local.\1."),
    (r"\.non_local_block\.theta\.conv\.", ".non_local.theta."),
    (r"\.non_local_block\.conv_out\.conv\.", ".non_local.W.0."),
    (r"\.non_local_block\.conv_out\.bn\.", ".non_local.W.1."),
]


CHECKPOINT_FORMATS = (
    "kinetix weights, official TSN/TSM/GSM checkpoints (module.base_model.*, new_fc.*), official TSM "
    "MobileNetV2, mmaction2 TSN/TSM (backbone.*, cls_head.fc_cls.*) or 2D ImageNet weights of the "
    "backbone (torchvision ResNet/MobileNetV2/Inception-v3, Caffe BN-Inception)"
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Recognizer2D) -> dict[str, torch.Tensor]:
    """Foreign checkpoints -> kinetix names.

    - official TSN/TSM/GSM (``module.base_model.*``, ``module.new_fc.*``; TSM's shifted convs are
      wrapped as ``conv1.net`` (whole blocks as ``N.net`` in place), its temporal pool wraps
      ``layer2`` as ``layer2.net``; GSM BN-Inception ids ``gsm_<conv id>.*`` are kept as is; GSM
      Inception-v3 ids ``mixed_4_tower_conv_1_Conv2D`` / ``..._batchnorm`` / ``gsm_<conv id>`` map to
      torchvision names; TSM non-local blocks ``layerX.Y.block.*`` / ``layerX.Y.nl.*``);
    - official TSM MobileNetV2 (offline and the online demo's layout):
      :func:`~kinetix.models.mobilenetv2.convert_official`;
    - mmaction2 TSN/TSM (``backbone.conv1.conv``, ``convK.bn``, ``downsample.conv/bn``,
      ``cls_head.fc_cls``; TSM-NL ``layerX.Y.block.*`` / ``layerX.Y.non_local_block.*``);
    - 2D ImageNet files (torchvision ResNet / Caffe BN-Inception): loaded into the backbone with
      :func:`~kinetix.models.resnet.load_image_weights`, the classifier keeps its initialisation.
    """
    sd = {
        k.removeprefix("module."): v for k, v in state_dict.items() if not k.startswith("data_preprocessor.")
    }
    if isinstance(model.backbone, MobileNetV2) and (out := convert_official(sd, model)) is not None:
        return out
    if not any(k.startswith(("base_model.", "backbone.", "new_fc.", "cls_head.")) for k in sd):
        load_image_weights(model, sd)
        return model.state_dict()
    # TSM's temporal pool (official `make_temporal_pool`, mmaction2 alike) wraps layer2 as
    # `TemporalPool(net=layer2)`: `layer2.net.N.` is kinetix's `layer2.N.` (the pool has no weights)
    sd = {re.sub(r"^((?:base_model|backbone)\.layer\d)\.net\.(?=\d)", r"\1.", k): v for k, v in sd.items()}
    _check_shift_layout(sd, model)
    own = model.state_dict()
    official_key = getattr(model.backbone, "official_key", lambda k: None)  # e.g. Inception-v3 ids
    out = {}
    for k, v in sd.items():
        if k.startswith(("backbone.", "cls_head.")):  # mmaction2
            for pat, rep in _MM_RESNET:
                k = re.sub(pat, rep, k)
        k = re.sub(r"^base_model\.", "backbone.", k)
        if k.startswith("backbone.") and (tv := official_key(k.removeprefix("backbone."))):
            k = "backbone." + tv
        k = re.sub(r"^new_fc\.", "fc.", k)
        k = k.replace(".net.", ".")  # TSM wrapper: conv1.net.weight -> conv1.weight
        k = re.sub(
            r"(layer\d\.\d+)\.block\.", r"\1.", k
        )  # TSM-NL wrapper: layer2.0.block.conv1 -> layer2.0.conv1
        k = re.sub(r"(layer\d\.\d+)\.nl\.(phi|g)\.0\.", r"\1.non_local.\2.", k)  # Sequential(conv, pool)
        k = re.sub(r"(layer\d\.\d+)\.nl\.", r"\1.non_local.", k)
        if k in own and own[k].shape != v.shape and own[k].numel() == v.numel():
            v = v.reshape(own[k].shape)  # e.g. BN tensors stored as (1, C) by Caffe converters
        out[k] = v
    for k in own:  # mmcv's NonLocal3d output conv has no bias (a zero bias here)
        if k.endswith(".non_local.W.0.bias") and k not in out and k.replace(".bias", ".weight") in out:
            out[k] = torch.zeros_like(own[k], device=out[k.replace(".bias", ".weight")].device)
    return out


def _check_shift_layout(sd: dict[str, torch.Tensor], model: Recognizer2D) -> None:
    """The official/mmaction2 TSM wrapper marks shifted blocks with ``.net.``; refuse a checkpoint
    whose shifted blocks differ from the model's (TSM weights in a TSN model would load silently
    and run without the shift, and vice versa)."""
    if not hasattr(model.backbone, "layer1"):
        return
    mm = re.compile(r"^backbone\.(?:conv1|layer\d\.\d+\.conv\d)\.conv\.")
    if not any(k.startswith(("base_model.", "cls_head.")) or mm.match(k) for k in sd):
        return  # kinetix's own names (no official/mmaction2 wrappers): the strict loader checks them
    pat = re.compile(r"^(?:base_model|backbone)\.(layer\d\.\d+)\.(?:block\.)?(?:conv1\.(?:conv\.)?)?net\.")
    in_ckpt = {m.group(1) for k in sd if (m := pat.match(k))}
    in_model = {n.removeprefix("backbone.").removesuffix(".temporal_in") for n, m in model.named_modules()
                if isinstance(m, TemporalShift) and n.endswith(".temporal_in")}  # fmt: skip
    if in_ckpt != in_model:
        what = "a TSM checkpoint" if in_ckpt else "a checkpoint without temporal shifts (TSN)"
        raise CheckpointError(
            f"{what}: shifted blocks {len(in_ckpt)} in the checkpoint vs {len(in_model)} in the model "
            f"(e.g. {sorted(in_ckpt ^ in_model)[:3]}). Use the matching model (tsm_* for TSM weights, "
            "tsn_* for TSN weights; tsm_r101 shifts every other block)."
        )


# ----------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------

_SRC_TSM = "https://github.com/mit-han-lab/temporal-shift-module (official weights: CC-BY-NC 4.0)"
_SRC_GSM = "https://github.com/swathikirans/GSM"


def _cfg(**kw) -> PretrainedCfg:
    return PretrainedCfg(**{"test_resize": 256, **kw})


_K400 = {"k400": _cfg(source=_SRC_TSM, licence="CC-BY-NC-4.0 (official checkpoints)")}
_TSN_R50 = {"k400": _K400["k400"].replace(paper_metrics={"k400_top1_8x1x1": 68.8, "k400_top1_8x1x10": 69.9})}
_TSM_R50 = {
    "k400": _K400["k400"].replace(
        paper_metrics={"k400_top1_8x1x1": 71.2, "k400_top1_8x1x10": 72.8, "k400_top1_dense_8x10x3": 74.1}
    ),
    "ssv2": _cfg(
        num_classes=174, test_views=(2, 3), source=_SRC_TSM, paper_metrics={"ssv2_top1_8x2x3": 61.2}
    ),
}
_TSM_R50_NL = {  # official README: dense sampling, 8 frames x 10 clips x 3 full-res crops
    "k400": _K400["k400"].replace(
        test_views=(10, 3), sampling="dense", frame_interval=8, paper_metrics={"k400_top1_dense_8x10x3": 75.6}
    )
}
_K400_CI = {"synthetic": _cfg(num_frames=8, input_size=64, num_classes=10, test_resize=64)}
_BGR = dict(channel_order="BGR", value_range=255.0, mean=BNINCEPTION_MEAN, std=BNINCEPTION_STD)
_SSV1_BGR = {"ssv1": _cfg(num_classes=174, source=_SRC_GSM, licence="see the official repository", **_BGR)}


def _resnet_recognizer(
    depth: int,
    num_classes: int = 400,
    num_frames: int = 8,
    dropout: float = 0.5,
    partial_bn: bool = False,
    channels_last: bool = False,
    **backbone_kwargs,
) -> Recognizer2D:
    backbone = resnet(depth, num_classes=0, num_frames=num_frames, **backbone_kwargs)
    return Recognizer2D(backbone, num_classes, num_frames, dropout, partial_bn, channels_last)


def _tsm_kwargs(depth, shift_div=8, shift_place="residual", causal=False, temporal_pool=False, **kw) -> dict:
    """Backbone kwargs of TSM: a shift in every block (every other block from ResNet-101 on)."""
    if shift_place not in ("residual", "block"):
        raise ValueError(f"shift_place must be 'residual' or 'block', got {shift_place!r}")
    return dict(
        temporal=functools.partial(TemporalShift, fold_div=shift_div, causal=causal),
        temporal_position="input" if shift_place == "residual" else "block",
        temporal_every=2 if depth >= 101 else 1,
        temporal_pool=temporal_pool,
        **kw,
    )


def tsn_resnet(depth: int, **kwargs) -> Recognizer2D:
    return _resnet_recognizer(depth, **kwargs)


# TSM-NL (ops/non_local.py): non-local blocks after res3 blocks 0, 2 and res4 blocks 0, 2, 4
NON_LOCAL_BLOCKS = {2: (0, 2), 3: (0, 2, 4)}


def tsm_resnet(depth: int, shift_div=8, shift_place="residual", causal=False, temporal_pool=False, **kwargs):
    bb = {k: kwargs.pop(k) for k in ("base_width", "zero_init_residual", "non_local", "non_local_blocks")
          if k in kwargs}  # fmt: skip
    return _resnet_recognizer(
        depth, **kwargs, **_tsm_kwargs(depth, shift_div, shift_place, causal, temporal_pool, **bb)
    )


@register_model(cfgs=_K400)
def tsn_r18(**kwargs):
    """TSN ResNet-18."""
    return tsn_resnet(18, **kwargs)


@register_model(cfgs=_TSN_R50)
def tsn_r50(**kwargs):
    """TSN ResNet-50 (8x224: 32.9 GMACs, 24.33 M params with 400 classes)."""
    return tsn_resnet(50, **kwargs)


@register_model(cfgs=_K400)
def tsn_r101(**kwargs):
    """TSN ResNet-101."""
    return tsn_resnet(101, **kwargs)


@register_model(cfgs=_K400)
def tsm_r18(**kwargs):
    """TSM ResNet-18 (residual shift, 1/8 + 1/8 channels)."""
    return tsm_resnet(18, **kwargs)


@register_model(cfgs=_TSM_R50)
def tsm_r50(**kwargs):
    """TSM ResNet-50 (residual shift, 1/8 + 1/8 channels); official K400 8f: 71.2% (1 clip, 1 crop)."""
    return tsm_resnet(50, **kwargs)


@register_model(cfgs=_K400)
def tsm_r101(**kwargs):
    """TSM ResNet-101 (shift in every other block, as released)."""
    return tsm_resnet(101, **kwargs)


@register_model(cfgs=_TSM_R50_NL)
def tsm_r50_nl(**kwargs):
    """TSM ResNet-50 with 5 embedded-Gaussian non-local blocks (after res3 blocks 0, 2 and res4
    blocks 0, 2, 4), as released (``..._segment8_e100_dense_nl``: 75.6% K400, 8 frames x 10 clips x
    3 crops). No online variant: non-local blocks see the whole clip."""
    return tsm_resnet(50, non_local=NonLocal3D, non_local_blocks=NON_LOCAL_BLOCKS, **kwargs)


@register_model(cfgs={"": _cfg()})
def tsm_r50_online(**kwargs):
    """Online (uni-directional) TSM ResNet-50: 1/8 of the channels from the previous frame only.
    Train on clips, run with :class:`StreamingRecognizer` one frame at a time."""
    return tsm_resnet(50, causal=True, **kwargs)


def _mobilenetv2_recognizer(
    num_classes=400, num_frames=8, dropout=0.5, partial_bn=False, channels_last=False, **bb
) -> Recognizer2D:
    backbone = MobileNetV2(num_classes=0, num_frames=num_frames, **bb)
    return Recognizer2D(backbone, num_classes, num_frames, dropout, partial_bn, channels_last)


def _shift(shift_div: int, causal: bool):
    return functools.partial(TemporalShift, fold_div=shift_div, causal=causal)


_TSM_MBV2 = {"k400": _K400["k400"].replace(paper_metrics={"k400_top1_8x10x1": 69.5})}


@register_model(cfgs=_TSM_MBV2)
def tsm_mobilenetv2(shift_div: int = 8, **kwargs):
    """TSM MobileNetV2 (as released: a shift at the input of the 10 inverted residual blocks that have
    an identity and an expansion layer); official K400 8f dense: 69.5% (10 clips)."""
    return _mobilenetv2_recognizer(temporal=_shift(shift_div, False), **kwargs)


@register_model(cfgs={"": _cfg()})
def tsm_mobilenetv2_online(shift_div: int = 8, **kwargs):
    """Online (uni-directional) TSM MobileNetV2, the official online demo's model: 1/8 of the channels
    from the previous frame only. Train on clips, run with :class:`StreamingRecognizer`."""
    return _mobilenetv2_recognizer(temporal=_shift(shift_div, True), **kwargs)


def _bninception_recognizer(
    num_classes=174, num_frames=8, dropout=0.5, partial_bn=False, channels_last=False, **bb
):
    backbone = BNInception(num_classes=0, num_frames=num_frames, **bb)
    return Recognizer2D(backbone, num_classes, num_frames, dropout, partial_bn, channels_last)


@register_model(cfgs=_SSV1_BGR)
def tsn_bninception(**kwargs):
    """TSN BN-Inception (BGR, 0..255 input, mean 104/117/128)."""
    return _bninception_recognizer(**kwargs)


@register_model(cfgs=_SSV1_BGR)
def tsm_bninception(shift_div: int = 8, **kwargs):
    """TSM BN-Inception: in-place shift at the input of every stage but the stem (block_2, 3a ... 5b),
    as the official mask; the official residual form cannot run where a stage changes shape."""
    return _bninception_recognizer(temporal="shift", shift_div=shift_div, **kwargs)


@register_model(cfgs=_SSV1_BGR)
def gsm_bninception(causal: bool = False, **kwargs):
    """GSM BN-Inception: 10 Gate-Shift modules at the official positions (SSv1)."""
    return _bninception_recognizer(temporal="gsm", causal=causal, **kwargs)


# Inception-v3 (official GSM): BGR 0..255, input 229, test resize 229*256//224 = 261
_GSM_INCV3 = {  # official README, Something-V1 val, 1 centre crop (8/12/16/24 frames, 1 or 2 clips)
    "ssv1": _cfg(num_classes=174, input_size=229, test_resize=261, source=_SRC_GSM,
                 licence="see the official repository", **_BGR,
                 paper_metrics={"ssv1_top1_8f": 49.01, "ssv1_top1_12f": 51.58, "ssv1_top1_16f": 50.63,
                                "ssv1_top1_24f": 49.63, "ssv1_top1_8x2": 50.43, "ssv1_top1_12x2": 51.98}),
}  # fmt: skip


def _inceptionv3_recognizer(
    num_classes=174, num_frames=8, dropout=0.5, partial_bn=False, channels_last=False, **bb
):
    backbone = InceptionV3(num_classes=0, num_frames=num_frames, **bb)
    return Recognizer2D(backbone, num_classes, num_frames, dropout, partial_bn, channels_last)


@register_model(cfgs=_GSM_INCV3)
def tsn_inceptionv3(variant: str = "cuhk", **kwargs):
    """TSN Inception-v3 (``variant="cuhk"``: the Caffe network of the official GSM/TSN code, BGR
    0..255 input at 229; ``"torchvision"``: torchvision's network, for its ImageNet weights)."""
    return _inceptionv3_recognizer(variant=variant, **kwargs)


@register_model(cfgs=_GSM_INCV3)
def gsm_inceptionv3(variant: str = "cuhk", causal: bool = False, **kwargs):
    """GSM Inception-v3: 10 Gate-Shift modules at the official positions (every block but
    ``Mixed_6d``); the backbone of every Something-V1 number in the official README."""
    return _inceptionv3_recognizer(temporal="gsm", variant=variant, causal=causal, **kwargs)


@register_model(cfgs={"ssv1": _cfg(num_classes=174)})
def gsm_r50(causal: bool = False, **kwargs):
    """GSM ResNet-50: a Gate-Shift module on every bottleneck's residual branch, after ``conv1``
    (before ``bn1``) — the GSM paper's BN-Inception placement rule applied to ResNet."""
    bb = {k: kwargs.pop(k) for k in ("base_width", "zero_init_residual") if k in kwargs}
    gsm = functools.partial(GateShift, causal=causal)
    return _resnet_recognizer(50, temporal=gsm, temporal_position="conv1", **bb, **kwargs)


# tiny CI variants (64px, 8 frames): test_tsn and test_tsm share one backbone size
_TINY = dict(base_width=8)


@register_model(cfgs=_K400_CI)
def test_tsn(**kwargs):
    """Tiny TSN (ResNet-18 layout, one block per stage, width 8) for CI."""
    return _resnet_recognizer_tiny(**kwargs)


@register_model(cfgs=_K400_CI)
def test_tsm(shift_div: int = 8, shift_place: str = "residual", temporal_pool: bool = False, **kwargs):
    """Tiny TSM, same backbone as ``test_tsn``."""
    return _resnet_recognizer_tiny(
        **_tsm_kwargs(18, shift_div, shift_place, temporal_pool=temporal_pool), **kwargs
    )


@register_model(cfgs=_K400_CI)
def test_tsm_nl(**kwargs):
    """Tiny TSM-NL (ResNet-18 layout with 3 / 5 blocks in stages 2 / 3, width 8) for CI: non-local
    blocks at the released positions."""
    nl = dict(non_local=NonLocal3D, non_local_blocks=NON_LOCAL_BLOCKS, layers=(1, 3, 5, 1))
    return _resnet_recognizer_tiny(**_tsm_kwargs(18, **nl), **kwargs)


@register_model(cfgs=_K400_CI)
def test_tsm_online(shift_div: int = 8, **kwargs):
    """Tiny causal TSM for streaming tests/demos."""
    return _resnet_recognizer_tiny(**_tsm_kwargs(18, shift_div, causal=True), **kwargs)


@register_model(cfgs=_K400_CI)
def test_gsm(causal: bool = False, **kwargs):
    """Tiny GSM (bottleneck layout, one block per stage, width 8)."""
    gsm = functools.partial(GateShift, causal=causal)
    return _resnet_recognizer_tiny(block="bottleneck", temporal=gsm, temporal_position="conv1", **kwargs)


_INCV3_CI = {"synthetic": _cfg(num_frames=8, input_size=75, num_classes=10, test_resize=86, **_BGR)}


@register_model(cfgs=_INCV3_CI)
def test_tsn_inceptionv3(variant: str = "cuhk", **kwargs):
    """Tiny TSN Inception-v3 for CI (same backbone as ``test_gsm_inceptionv3``, no GSM)."""
    return _inceptionv3_recognizer(variant=variant, width_div=8, **kwargs)


@register_model(cfgs=_INCV3_CI)
def test_gsm_inceptionv3(variant: str = "cuhk", causal: bool = False, **kwargs):
    """Tiny GSM Inception-v3 for CI: every width / 8, 75x75 input (the smallest Inception-v3 input)."""
    return _inceptionv3_recognizer(temporal="gsm", variant=variant, causal=causal, width_div=8, **kwargs)


_TINY_MBV2 = dict(width_mult=0.25, last_channel=64)


@register_model(cfgs=_K400_CI)
def test_tsm_mobilenetv2(shift_div: int = 8, **kwargs):
    """Tiny TSM MobileNetV2 (width 0.25, last conv 64 channels) for CI."""
    return _mobilenetv2_recognizer(
        **{"num_classes": 10, **_TINY_MBV2, **kwargs}, temporal=_shift(shift_div, False)
    )


@register_model(cfgs=_K400_CI)
def test_tsm_mobilenetv2_online(shift_div: int = 8, **kwargs):
    """Tiny online TSM MobileNetV2 for streaming tests/demos."""
    return _mobilenetv2_recognizer(
        **{"num_classes": 10, **_TINY_MBV2, **kwargs}, temporal=_shift(shift_div, True)
    )


def _resnet_recognizer_tiny(
    num_classes=10, num_frames=8, dropout=0.5, partial_bn=False, channels_last=False, block="basic",
    layers=(1, 1, 1, 1), **bb,
):  # fmt: skip
    blk = BasicBlock if block == "basic" else Bottleneck
    backbone = ResNet(blk, layers, num_classes=0, num_frames=num_frames, **{**_TINY, **bb})
    return Recognizer2D(backbone, num_classes, num_frames, dropout, partial_bn, channels_last)
