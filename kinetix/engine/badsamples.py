"""Counting unreadable samples over a whole split, across DataLoader workers and DDP ranks.

Datasets (:class:`kinetix.data.datasets.VideoClassificationDataset`, ``AVADataset``) skip or
replace a sample they cannot read and report its index in the batch (``batch["bad_indices"]``,
see :func:`kinetix.data.datasets.collate_skipping`). Each worker process only sees its share, so
:class:`BadSampleTracker` adds the reports up in the main process, per split; under DDP each rank
only sees its sampler's share, so the trackers of all ranks exchange their index sets (a union: a
sample seen by two ranks counts once) at the end of every epoch of every stage and whenever a
checkpoint is saved. The run stops (:class:`~kinetix.errors.DatasetError`) as soon as the distinct
bad samples of a split exceed ``data.max_bad_fraction`` of it: checked on this rank's samples at
every batch, and on the whole split's after each exchange (on every rank alike). The counts go to
the checkpoint manifest, the printed summary and ``metrics.json``.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from kinetix.data.datasets import check_bad_fraction

STAGES = ("train", "val", "test")


class BadSampleTracker(Callback):
    """Distinct unreadable samples per split (``train``/``val``/``test``), checked against
    ``max_bad_fraction`` at every batch and, whole-split across ranks, at every epoch end;
    stateful, so a resumed run keeps its counts."""

    def __init__(self, max_bad_fraction: float):
        self.max_bad_fraction = max_bad_fraction
        self.bad: dict[str, set[int]] = {s: set() for s in STAGES}
        self._trainer = self._module = None

    def counts(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.bad.items()}

    def paths(self, trainer, stage: str) -> list[str]:
        """The files behind the bad indices of ``stage`` (when the dataset can say)."""
        ds = _dataset(trainer, stage)
        path = getattr(ds, "_sample_path", None)
        return [path(i) for i in sorted(self.bad[stage])] if path else []

    def _check(self, trainer, stage: str) -> None:
        ds = _dataset(trainer, stage)
        if ds is not None and len(ds):
            examples = {p: "unreadable" for p in self.paths(trainer, stage)[:5]}
            check_bad_fraction(len(self.bad[stage]), len(ds), self.max_bad_fraction, examples)

    def _publish(self) -> None:
        """The counts into the module's ``meta`` (which every checkpoint's manifest carries)."""
        meta = getattr(self._module, "meta", None)
        if isinstance(meta, dict):
            meta["bad_samples"] = {s: n for s, n in self.counts().items() if n}

    def _add(self, trainer, stage: str, batch) -> None:
        idx = batch.get("bad_indices") if isinstance(batch, dict) else None
        if idx is None or not len(idx):
            return
        self.bad[stage].update(int(i) for i in idx.tolist())
        self._publish()
        self._check(trainer, stage)  # this rank's share: a lower bound of the whole split's count

    def sync(self, trainer) -> None:
        """Make every rank's sets the union of all ranks' sets (a collective: every rank must call
        it at the same point), publish the counts and check the whole splits' fractions."""
        if trainer.world_size > 1:
            strategy = trainer.strategy
            device = strategy.root_device
            sizes = strategy.all_gather(torch.tensor([len(self.bad[s]) for s in STAGES], device=device))
            width = int(sizes.max())  # sizes: (world, stages)
            if width:
                mine = torch.full((len(STAGES), width), -1, dtype=torch.long)  # -1 pads
                for k, s in enumerate(STAGES):
                    mine[k, : len(self.bad[s])] = torch.tensor(sorted(self.bad[s]), dtype=torch.long)
                every = strategy.all_gather(mine.to(device)).cpu()  # (world, stages, width)
                for k, s in enumerate(STAGES):
                    column = every[:, k]  # (world, width)
                    self.bad[s] = set(column[column >= 0].tolist())
        self._publish()
        for s in STAGES:
            if self.bad[s]:
                self._check(trainer, s)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._add(trainer, "train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(trainer, "val", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(trainer, "test", batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sync(trainer)  # before the epoch-end checkpoint (checkpoint callbacks run last)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.sync(trainer)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.sync(trainer)

    def state_dict(self) -> dict:
        # Lightning asks every rank for it (then rank 0 writes the checkpoint): exchange first, so
        # a checkpoint written mid-epoch also holds the whole split's samples seen so far
        if self._trainer is not None:
            self.sync(self._trainer)
        return {s: sorted(v) for s, v in self.bad.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for s in STAGES:
            self.bad[s] = set(state_dict.get(s, []))
        self._publish()  # a resumed run's manifests carry the counts even before a new bad sample


def _dataset(trainer, stage: str):
    dm = getattr(trainer, "datamodule", None)
    return getattr(dm, f"{stage}_set", None) if dm is not None else None
