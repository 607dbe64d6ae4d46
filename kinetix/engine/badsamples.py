"""Counting unreadable samples over a whole split, across DataLoader workers.

Datasets (:class:`kinetix.data.datasets.VideoClassificationDataset`, ``AVADataset``) skip or
replace a sample they cannot read and report its index in the batch (``batch["bad_indices"]``,
see :func:`kinetix.data.datasets.collate_skipping`). Each worker process only sees its share, so
:class:`BadSampleTracker` adds the reports up in the main process, per split, and stops the run
(:class:`~kinetix.errors.DatasetError`) as soon as the distinct bad samples of a split exceed
``data.max_bad_fraction`` of it. The counts go to the checkpoint manifest, the printed summary
and ``metrics.json``.
"""

from __future__ import annotations

from lightning.pytorch import Callback

from kinetix.data.datasets import check_bad_fraction

STAGES = ("train", "val", "test")


class BadSampleTracker(Callback):
    """Distinct unreadable samples per split (``train``/``val``/``test``), checked against
    ``max_bad_fraction`` at every batch; stateful, so a resumed run keeps its counts."""

    def __init__(self, max_bad_fraction: float):
        self.max_bad_fraction = max_bad_fraction
        self.bad: dict[str, set[int]] = {s: set() for s in STAGES}

    def counts(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.bad.items()}

    def paths(self, trainer, stage: str) -> list[str]:
        """The files behind the bad indices of ``stage`` (when the dataset can say)."""
        ds = _dataset(trainer, stage)
        path = getattr(ds, "_sample_path", None)
        return [path(i) for i in sorted(self.bad[stage])] if path else []

    def _add(self, trainer, pl_module, stage: str, batch) -> None:
        idx = batch.get("bad_indices") if isinstance(batch, dict) else None
        if idx is None or not len(idx):
            return
        self.bad[stage].update(int(i) for i in idx.tolist())
        meta = getattr(pl_module, "meta", None)
        if isinstance(meta, dict):
            meta["bad_samples"] = {s: n for s, n in self.counts().items() if n}
        ds = _dataset(trainer, stage)
        if ds is not None and len(ds):
            examples = {p: "unreadable" for p in self.paths(trainer, stage)[:5]}
            check_bad_fraction(len(self.bad[stage]), len(ds), self.max_bad_fraction, examples)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._add(trainer, pl_module, "train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(trainer, pl_module, "val", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(trainer, pl_module, "test", batch)

    def state_dict(self) -> dict:
        return {s: sorted(v) for s, v in self.bad.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for s in STAGES:
            self.bad[s] = set(state_dict.get(s, []))


def _dataset(trainer, stage: str):
    dm = getattr(trainer, "datamodule", None)
    return getattr(dm, f"{stage}_set", None) if dm is not None else None
