"""The experiment schema: every key a config file may hold, its type and its default.

A config is a flat YAML file (no inheritance, no includes) with one level of sections::

    task: classification
    model:   {name: tsm_r50, num_frames: 8, kwargs: {drop_path_rate: 0.1}}
    data:    {root: data/k400, train_ann: train.csv, val_ann: val.csv, batch_size: 8}
    optim:   {name: sgd, lr: 0.01, weight_decay: 1.0e-4}
    schedule: {name: cosine, warmup_epochs: 1}
    train:   {epochs: 50, precision: 32-true}
    eval:    {views: [10, 3], aggregate: logits}

Data settings left ``null`` (input size, mean/std, channel order, sampling, frames, test views) are
derived from the model's ``PretrainedCfg``; setting them overrides the model's contract explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class ModelSection:
    name: str = "test_tsm"  # registered model name (``arch`` or ``arch.tag``)
    pretrained: bool = False  # load the tag's published weights
    checkpoint: str | None = None  # weights file to start from (kinetix or foreign, converted)
    num_frames: int | None = None  # frames the model is built for (null: its PretrainedCfg)
    kwargs: dict = field(default_factory=dict)  # extra entry-point arguments (drop_path_rate, ...)


@dataclass
class DataSection:
    root: str | None = None  # folder the video paths are relative to (null: the annotation file's)
    train_ann: str | None = None  # annotation file (list / csv / json); null: no training split
    val_ann: str | None = None
    test_ann: str | None = None
    format: str = "auto"  # auto | kinetics | list | rawframes | ssv2 | ucf101 | hmdb51
    classes: str | None = None  # classes.txt (one name per line); null: classes.txt beside the
    #                             annotations, the format's own names, or numeric labels
    batch_size: int = 8  # per device
    val_batch_size: int | None = None  # null: batch_size
    num_workers: int = 2
    # Overrides of the model's PretrainedCfg (null: derived from the model, never retyped).
    input_size: int | None = None
    test_resize: int | None = None
    mean: list | None = None
    std: list | None = None
    channel_order: str | None = None  # RGB | BGR
    value_range: float | None = None  # 1.0 (x/255) or 255.0 (raw)
    sampling: str | None = None  # segment | dense
    frame_interval: int | None = None
    # Augmentation
    scale_jitter: str = "multiscale"  # multiscale (TSN/TSM corner crops) | rrc (random resized crop)
    flip: bool = True  # horizontal flip; switch off for direction-sensitive data (SSv2, synthetic)
    flip_label_map: dict | None = None  # {label: label} swapped on flip (e.g. left/right classes)
    color_jitter: float = 0.0
    randaugment: list | None = None  # [num_ops, magnitude], e.g. [2, 9]
    erase_prob: float = 0.0
    max_bad_fraction: float = 0.01  # skip undecodable videos, stop past this fraction
    cache_decoded: bool = False  # keep decoded videos in memory (small datasets: demo, quick tests)


@dataclass
class OptimSection:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # base learning rate (per the global batch the recipe was tuned for)
    weight_decay: float = 1.0e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    layer_decay: float = 1.0  # layer-wise LR decay (ViT fine-tuning, e.g. 0.75); 1.0: off
    head_lr_mult: float = 1.0  # LR multiplier for the classifier
    no_decay_1d: bool = True  # no weight decay on biases, norms and 1-D params


@dataclass
class ScheduleSection:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01  # LR at step 0 = lr * this
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    milestones: list = field(default_factory=list)  # step: epochs at which LR *= gamma
    gamma: float = 0.1
    # token-pruning models (model.kwargs.keep_rate < 1): train every pruning block at keep 1.0 for
    # keep_rate_start_epochs, then cosine down to its keep_rate over keep_rate_shrink_epochs (EViT)
    keep_rate_start_epochs: float = 0.0
    keep_rate_shrink_epochs: float = 0.0


@dataclass
class TrainSection:
    epochs: int = 10
    precision: str = "32-true"  # 32-true | bf16-mixed (CPU/GPU) | 16-mixed (GPU)
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int | str = 1  # int, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None  # clip the global grad norm to this
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0  # probability of mixing a batch (when an alpha > 0)
    ema: bool = False  # keep an exponential moving average of the weights; evaluate with it
    ema_decay: float = 0.999
    partial_bn: bool = False  # TSN: freeze every BatchNorm but the first
    channels_last: bool = False
    compile: bool = False  # torch.compile the model for training and evaluation (needs a C++ compiler on CPU)
    checkpoint_every_n_steps: int | None = None  # mid-epoch checkpoints (resume continues exactly)
    keep_last: int = 2  # step checkpoints kept (best and final are kept too)
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    loggers: list | str = field(default_factory=lambda: ["csv"])  # csv | tensorboard | any Lightning
    #                                                              logger class name, e.g. [csv, tensorboard]
    output_dir: str = "runs"
    name: str = "experiment"  # run folder: output_dir/name (suffixed -v1, -v2 if it exists)
    progress_bar: bool = True


@dataclass
class EvalSection:
    views: list | None = None  # [clips, crops]; null: the model's test_views
    aggregate: str = "logits"  # logits | probs: mean of logits or of softmax probabilities
    reverse_frames: bool = False  # feed every clip time-reversed (temporal-order probe)
    topk: list = field(default_factory=lambda: [1, 5])


@dataclass
class Config:
    task: str = "classification"  # classification | detection
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    extra: dict = field(default_factory=dict)  # free-form section for task plug-ins (detection)


SECTIONS = {f.name: f.default_factory for f in fields(Config) if f.name not in ("task", "seed", "extra")}

# Allowed values of string keys: checked on load.
CHOICES = {
    "task": ("classification", "detection"),
    "data.format": ("auto", "kinetics", "list", "rawframes", "ssv2", "ucf101", "hmdb51"),
    "data.channel_order": ("RGB", "BGR"),
    "data.sampling": ("segment", "dense"),
    "data.scale_jitter": ("multiscale", "rrc"),
    "optim.name": ("sgd", "adamw"),
    "schedule.name": ("cosine", "step", "constant"),
    "eval.aggregate": ("logits", "probs"),
    # what Lightning's Trainer accepts (the short aliases included)
    "train.precision": (
        "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64",
    ),
    "train.accelerator": ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
}  # fmt: skip

# Value ranges of numeric keys, checked on load: key -> (lowest, highest, lowest included,
# highest included); None: unbounded on that side. Floats must also be finite (no .nan / .inf).
RANGES = {
    "seed": (0, None, True, True),
    "model.num_frames": (1, None, True, True),
    "data.batch_size": (1, None, True, True),
    "data.val_batch_size": (1, None, True, True),
    "data.num_workers": (0, None, True, True),
    "data.input_size": (1, None, True, True),
    "data.test_resize": (1, None, True, True),
    "data.value_range": (0, None, False, True),
    "data.frame_interval": (1, None, True, True),
    "data.color_jitter": (0, None, True, True),
    "data.erase_prob": (0, 1, True, True),
    "data.max_bad_fraction": (0, 1, True, True),
    "optim.lr": (0, None, False, True),
    "optim.weight_decay": (0, None, True, True),
    "optim.momentum": (0, 1, True, True),
    "optim.eps": (0, None, False, True),
    "optim.layer_decay": (0, 1, False, True),
    "optim.head_lr_mult": (0, None, True, True),
    "schedule.warmup_epochs": (0, None, True, True),
    "schedule.warmup_start_factor": (0, 1, False, True),
    "schedule.min_lr_ratio": (0, 1, True, True),
    "schedule.gamma": (0, None, False, True),
    "schedule.keep_rate_start_epochs": (0, None, True, True),
    "schedule.keep_rate_shrink_epochs": (0, None, True, True),
    "train.epochs": (1, None, True, True),
    "train.num_nodes": (1, None, True, True),
    "train.accumulate_grad_batches": (1, None, True, True),
    "train.gradient_clip_val": (0, None, False, True),
    "train.label_smoothing": (0, 1, True, False),
    "train.mixup_alpha": (0, None, True, True),
    "train.cutmix_alpha": (0, None, True, True),
    "train.mix_prob": (0, 1, True, True),
    "train.ema_decay": (0, 1, True, False),
    "train.checkpoint_every_n_steps": (1, None, True, True),
    "train.keep_last": (1, None, True, True),
    "train.val_every_n_epochs": (1, None, True, True),
    "train.log_every_n_steps": (1, None, True, True),
}

# Keys whose value is a list of a fixed length of positive numbers: key -> (length, element type).
LISTS = {
    "eval.views": (2, int),
    "eval.topk": (None, int),
    "data.mean": (3, float),
    "data.std": (3, float),
    "data.randaugment": (2, float),
    "optim.betas": (2, float),
    "schedule.milestones": (None, float),
}
