"""A tiny registered video classifier and an in-memory dataset for engine tests.

``engine_tiny``: Conv3d -> BatchNorm -> ReLU -> global pool -> dropout -> Linear, so the engine's
BatchNorm, dropout and classifier handling is exercised in a few milliseconds per step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from lightning.pytorch.loggers import Logger
from torch.utils.data import Dataset

from kinetix.models import PretrainedCfg, is_model, register_model

TINY_CFG = PretrainedCfg(num_frames=4, input_size=16, num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)


class TinyVideoNet(nn.Module):
    def __init__(self, num_classes: int = 3, num_frames: int = 4, width: int = 8, drop: float = 0.2):
        super().__init__()
        self.stem = nn.Conv3d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.blocks = nn.Sequential(nn.Conv3d(width, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU())
        self.drop = nn.Dropout(drop)
        self.head = nn.Linear(width, num_classes)
        self.pos = nn.Parameter(torch.zeros(1, width, 1, 1, 1))

    def forward_features(self, x):  # (B, C, T, H, W) -> (B, width)
        x = torch.relu(self.bn1(self.stem(x))) + self.pos
        return self.blocks(x).mean(dim=(2, 3, 4))

    def forward(self, x):
        return self.head(self.drop(self.forward_features(x)))

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int):
        self.head = nn.Linear(self.head.in_features, num_classes)

    def no_weight_decay(self):
        return {"pos"}


if not is_model("engine_tiny"):

    @register_model(cfgs={"": TINY_CFG})
    def engine_tiny(**kwargs):
        return TinyVideoNet(**kwargs)


class DirectionDataset(Dataset):
    """Class 0: a bright bar moving right; 1: moving left; 2: static. Deterministic per index,
    already normalised float ``(C, T, H, W)`` (or ``(V, C, T, H, W)`` with ``views``)."""

    def __init__(self, n: int = 24, num_frames: int = 4, size: int = 16, views: int = 0, augment=False):
        self.n, self.t, self.s, self.views, self.augment = n, num_frames, size, views, augment

    def __len__(self):
        return self.n

    def clip(self, i: int) -> torch.Tensor:
        label = i % 3
        g = torch.Generator().manual_seed(i)
        x = torch.randn(3, self.t, self.s, self.s, generator=g) * 0.3
        start = int(torch.randint(0, self.s - self.t, (1,), generator=g))
        for t in range(self.t):
            col = start + (t if label == 0 else (self.t - 1 - t) if label == 1 else 0)
            x[:, t, :, col] += 2.0
        if self.augment:  # global-RNG noise: exercises per-sample seeding
            x = x + 0.1 * torch.randn_like(x)
        return x

    def __getitem__(self, i):
        x = self.clip(i)
        if self.views:
            x = torch.stack([x] * self.views)
        return {"video": x, "label": i % 3, "index": i}


CLASSES = ("moving left", "moving right", "static square")


def make_mp4_dataset(out, num_videos: int = 18, size: int = 16, seed: int = 0):
    """Real H.264 files from the synthetic generator: 3 classes, 8 frames of ``size`` px."""
    from kinetix.data.synthetic import generate_temporal

    return generate_temporal(
        out,
        num_videos=num_videos,
        size=size,
        fps=4.0,
        seconds=2.0,
        seed=seed,
        classes=list(CLASSES),
        val_fraction=0.34,
    )


def config_text(data_dir, out_dir, **sections) -> str:
    """A complete YAML config for ``engine_tiny`` on ``make_mp4_dataset`` output."""
    base = {
        "model": {"name": "engine_tiny"},
        "data": {
            "train_ann": f"{data_dir}/train.txt",
            "val_ann": f"{data_dir}/val.txt",
            "test_ann": f"{data_dir}/val.txt",
            "batch_size": 4,
            "num_workers": 0,
            "flip": False,
        },
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 2, "output_dir": str(out_dir), "name": "tiny", "progress_bar": False},
        "eval": {"views": [1, 1]},
    }
    for sec, kv in sections.items():
        base.setdefault(sec, {}).update(kv)
    import yaml

    return yaml.safe_dump(base, sort_keys=False)


class RecordingLogger(Logger):
    """A Lightning logger keeping every logged metric in memory (for logger selection tests)."""

    def __init__(self, save_dir: str = ""):
        super().__init__()
        self.save_dir_arg, self.metrics = save_dir, []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    @property
    def experiment(self):
        return self
