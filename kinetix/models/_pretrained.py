"""Per-weight metadata: what a model expects as input, carried with the weights (timm-style).

Data settings (frames, input size, mean/std, channel order, test views) are derived from the
model's :class:`PretrainedCfg`, never retyped in a data config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # JAX/timm ViT, ViViT ([-1, 1] input)
INCEPTION_STD = (0.5, 0.5, 0.5)
KINETICS_MEAN = (0.45, 0.45, 0.45)  # PySlowFast defaults (TimeSformer, VideoMAE, EVAD)
KINETICS_STD = (0.225, 0.225, 0.225)
BNINCEPTION_MEAN = (104.0, 117.0, 128.0)  # Caffe BN-Inception: BGR, 0..255 range
BNINCEPTION_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class PretrainedCfg:
    """Input contract (and provenance) of one set of weights.

    ``value_range`` is the scale of pixels before mean/std: 1.0 means uint8/255 (ImageNet style),
    255.0 means raw 0..255 (Caffe BN-Inception). ``sampling`` is ``"segment"`` (TSN-style sparse) or
    ``"dense"`` (consecutive frames every ``frame_interval``).
    """

    num_frames: int = 8
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "RGB"
    value_range: float = 1.0
    sampling: str = "segment"
    frame_interval: int = 1
    test_views: tuple[int, int] = (1, 1)  # temporal clips x spatial crops
    test_resize: int | None = None  # short side before the test crop; default input_size*256/224
    num_classes: int = 400
    tag: str = ""
    file: str | None = None  # local weights file (safetensors) or hub filename
    hf_hub_id: str | None = None
    source: str = ""
    licence: str = ""
    paper_metrics: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {self.sampling!r}")

    def replace(self, **changes) -> PretrainedCfg:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)
