"""``VideoDataModule``: train/val/test loaders from a config, with data settings from the model.

Frames, sampling, input size, mean/std, channel order and test views come from the model's
``PretrainedCfg`` unless the config's ``data`` section overrides them explicitly
(:func:`resolve_data_settings`).

Resumable, reproducible order: :class:`ResumableSampler` draws a permutation from ``(seed, epoch)``,
shards it over DDP ranks and yields ``(epoch, index)`` keys; :class:`EpochSeeded` seeds every sample's
augmentation RNG from ``(seed, epoch, index)``. The data module saves how many batches of the
current epoch were consumed in each checkpoint, and a resumed run skips exactly those.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kinetix.data.datasets import collate_skipping
from kinetix.data.views import DataSettings
from kinetix.errors import ConfigError


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def resolve_data_settings(pretrained_cfg, data_cfg, eval_cfg=None) -> DataSettings:
    """Settings from the model's ``PretrainedCfg``; non-null ``data.*`` keys override them."""
    pc = pretrained_cfg

    def pick(name, default):
        value = getattr(data_cfg, name, None)
        return default if value is None else value

    views = eval_cfg.views if eval_cfg is not None and eval_cfg.views is not None else pc.test_views
    if len(views) != 2 or min(views) < 1:
        raise ConfigError(f"eval.views must be [clips, crops] with both >= 1, got {views}")
    return DataSettings(
        num_frames=pc.num_frames,
        input_size=pick("input_size", pc.input_size),
        mean=tuple(pick("mean", pc.mean)),
        std=tuple(pick("std", pc.std)),
        channel_order=pick("channel_order", pc.channel_order),
        value_range=pick("value_range", pc.value_range),
        sampling=pick("sampling", pc.sampling),
        frame_interval=pick("frame_interval", pc.frame_interval),
        test_views=(int(views[0]), int(views[1])),
        test_resize=pick("test_resize", pc.test_resize),
    )


class ResumableSampler(Sampler):
    """Seeded, DDP-sharded sampler yielding ``(epoch, index)`` keys; can skip consumed samples.

    The order of epoch ``e`` is ``randperm(n)`` from ``derive_seed(seed, e)`` (or ``arange`` without
    shuffling), padded by wrap-around to a multiple of ``world_size`` and split ``rank::world_size``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ):
        self.n, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.skip: tuple[int, int] | None = None  # (epoch, samples to skip on this rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.pad and self.n % self.world_size:
            idx += idx[: self.world_size - self.n % self.world_size]  # wrap-around padding
        return idx[self.rank :: self.world_size]

    def __iter__(self):
        idx = self.order(self.epoch)
        if self.skip is not None and self.skip[0] == self.epoch:
            idx = idx[self.skip[1] :]
            self.skip = None
        return iter([(self.epoch, i) for i in idx])


class EpochSeeded(Dataset):
    """Wrap a map-style dataset: ``ds[(epoch, i)]`` seeds Python/NumPy/torch RNGs from
    ``(seed, epoch, i)`` and returns ``base[i]``, so augmentation does not depend on workers or on
    where a run was resumed."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, i = key
        s = derive_seed(self.seed, epoch, i)
        random.seed(s)
        np.random.seed(s % (1 << 32))
        torch.manual_seed(s)
        return self.base[i]


def fingerprint_files(paths) -> str | None:
    """SHA-256 over the bytes of annotation files (the dataset's identity in manifests)."""
    h = hashlib.sha256()
    seen = False
    for p in paths:
        if p is not None and Path(p).is_file():
            h.update(Path(p).name.encode())
            h.update(Path(p).read_bytes())
            seen = True
    return h.hexdigest() if seen else None


class VideoDataModule(pl.LightningDataModule):
    """Loaders over ready-made datasets (``train``, ``val``, ``test``: map-style, items are dicts
    ``{"video", "label", "index"}``). The task modules build one from a config; ``collate_fn``
    batches the items (default: stacking; detection: ``collate_detection``) after
    :func:`~kinetix.data.datasets.collate_skipping` has taken out the unreadable ones."""

    def __init__(
        self,
        train=None,
        val=None,
        test=None,
        *,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        class_names: list[str] | None = None,
        fingerprint: str | None = None,
        collate_fn=None,
    ):
        super().__init__()
        self.train_set, self.val_set, self.test_set = train, val, test
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.class_names, self.fingerprint = class_names, fingerprint
        self.collate_fn = collate_fn
        self._train_sampler: ResumableSampler | None = None
        self._resume: dict | None = None

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, dataset, sampler, batch_size, drop_last=False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=drop_last,
            # unreadable samples: evaluation's skipped items are dropped, every bad index reported
            collate_fn=functools.partial(collate_skipping, collate=self.collate_fn),
            persistent_workers=False,
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise ConfigError("no training data: set data.train_ann in the config")
        rank, world = self._rank_world()
        sampler = ResumableSampler(
            len(self.train_set), shuffle=True, seed=self.seed, rank=rank, world_size=world
        )
        if self._resume is not None:
            # Multi-worker loaders draw indices when the iterator is built, which Lightning does
            # before its set_epoch() on resume: set the epoch this loader serves first ourselves.
            sampler.set_epoch(self._resume["epoch"])
            sampler.skip = (self._resume["epoch"], self._resume["batches"] * self.batch_size)
        self._train_sampler = sampler
        drop_last = len(sampler) > self.batch_size  # avoid a size-1 last batch for BatchNorm
        return self._loader(EpochSeeded(self.train_set, self.seed), sampler, self.batch_size, drop_last)

    def _eval_loader(self, dataset, what: str) -> DataLoader:
        if dataset is None:
            raise ConfigError(f"no {what} data: set data.{what}_ann in the config")
        rank, world = self._rank_world()
        sampler = ResumableSampler(len(dataset), shuffle=False, rank=rank, world_size=world, pad=False)
        return self._loader(EpochSeeded(dataset, self.seed), sampler, self.val_batch_size)

    def val_dataloader(self):
        return self._eval_loader(self.val_set, "val") if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set, "test")

    # Position in the epoch, saved in every checkpoint (mid-epoch resume skips consumed batches).
    def state_dict(self) -> dict:
        t = self.trainer
        if t is None:
            return {}
        done = t.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= t.num_training_batches:  # saved at the end of an epoch: the next one starts afresh
            return {"epoch": t.current_epoch + 1, "batches": 0}
        return {"epoch": t.current_epoch, "batches": done}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._resume = dict(state_dict)
