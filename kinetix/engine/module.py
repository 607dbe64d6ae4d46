"""``ClassificationModule``: the LightningModule that trains and evaluates any registered recogniser.

Input batches are dicts ``{"video": float (B, C, T, H, W) or (B, V, C, T, H, W), "label": (B,)}``;
the model maps ``(B, C, T, H, W)`` to logits ``(B, K)``. Training: cross-entropy with label smoothing,
optional mixup/CutMix (soft targets); partial BN, EMA, seeding and the optimiser come from
:class:`~kinetix.engine.task.TaskModule`. Validation/test: multi-view aggregation
(:mod:`kinetix.engine.multiview`), optionally on time-reversed clips.

Reproducibility: the global RNG (dropout, drop-path, mixup) is re-seeded at every step from
``(seed, global_step, rank)``, so a run resumed from a mid-epoch checkpoint draws the same numbers
as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kinetix.data.transforms import MixupCutmix
from kinetix.errors import CheckpointError

from .datamodule import derive_seed
from .metrics import ClassificationMeter
from .multiview import predict_views
from .task import TaskModule, TrainingDivergedError, checkpoint_metadata

__all__ = ["ClassificationModule", "TrainingDivergedError", "checkpoint_metadata", "derive_seed"]


class ClassificationModule(TaskModule):
    """Train/evaluate ``model`` with the settings of a :class:`kinetix.config.Config`.

    After a test run, ``test_results`` holds the metrics and ``test_scores`` the aggregated scores
    ``(N, K)`` of every test sample, in dataset order (``test_index``)."""

    def __init__(self, model, cfg, class_names: list[str] | None = None, meta: dict | None = None):
        super().__init__(model, cfg, class_names, meta)
        t = cfg.train
        self.mixer = None
        if t.mixup_alpha > 0 or t.cutmix_alpha > 0:
            self.mixer = MixupCutmix(
                t.mixup_alpha,
                t.cutmix_alpha,
                prob=t.mix_prob,
                label_smoothing=t.label_smoothing,
                num_classes=self.num_classes,
            )
        ks = tuple(k for k in cfg.eval.topk if k <= self.num_classes) or (1,)
        self.val_meter = ClassificationMeter(self.num_classes, ks)
        self.test_meter = ClassificationMeter(self.num_classes, ks)
        self.reverse_frames = cfg.eval.reverse_frames
        self.aggregate = cfg.eval.aggregate
        self.test_results: dict = {}
        self.test_index, self.test_scores = torch.zeros(0, dtype=torch.long), torch.zeros(0, self.num_classes)
        self._test_parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -------------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch, batch_idx) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.mixer is not None:
            self.mixer.rng = np.random.default_rng(
                derive_seed(self.cfg.seed, self.global_step, self.global_rank, 1)
            )

    def training_step(self, batch, batch_idx):
        x, y = batch["video"], batch["label"]
        if self.cfg.train.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.mixer is not None:
            x, target = self.mixer(x, y)  # soft targets (B, K), label smoothing included
            logits = self.net(x)
            loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        self.check_finite(loss)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        if self.mixer is None:
            acc = (logits.detach().argmax(-1) == y).float().mean() * 100
            self.log("train/top1", acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    # ------------------------------------------------------------------------------ evaluation
    def _scores(self, batch) -> torch.Tensor:
        return predict_views(self.eval_model, batch["video"], self.aggregate, self.reverse_frames)

    def on_validation_epoch_start(self) -> None:
        self.val_meter.reset()

    def validation_step(self, batch, batch_idx):
        if "video" not in batch:  # every video of the batch was unreadable (skipped and counted)
            return
        scores = self._scores(batch)
        self.val_meter.update(scores, batch["label"])
        loss = F.cross_entropy(scores.float(), batch["label"])
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch["label"]), sync_dist=True)

    def _reduce(self, meter: ClassificationMeter) -> dict[str, float]:
        if self.trainer.world_size > 1:
            state = self.trainer.strategy.reduce(meter.state().to(self.device), reduce_op="sum")
            meter.load_state(state)
        return meter.compute()

    def on_validation_epoch_end(self) -> None:
        res = self._reduce(self.val_meter)
        for k, v in res.items():
            if k != "count":
                self.log(f"val/{k}", v, prog_bar=k == "top1", rank_zero_only=True)

    def on_test_epoch_start(self) -> None:
        self.test_meter.reset()
        self._test_parts = []

    def test_step(self, batch, batch_idx):
        if "video" not in batch:
            return
        scores = self._scores(batch)
        if not bool(torch.isfinite(scores).all()):
            raise CheckpointError(
                f"{self.meta.get('checkpoint', 'the checkpoint')}: gives non-finite scores (NaN/inf); its "
                "weights are broken or overflow at this precision (try train.precision=32-true). "
                "Use another checkpoint"
            )
        self.test_meter.update(scores, batch["label"])
        index = batch.get("index")
        if index is None:  # datasets without an index: batches come in order (no shuffling in test)
            done = sum(len(i) for i, _ in self._test_parts)
            index = torch.arange(done, done + len(scores))
        self._test_parts.append((index.cpu(), scores.float().cpu()))

    def on_test_epoch_end(self) -> None:
        self.test_results = self._reduce(self.test_meter)
        if self._test_parts:
            index = torch.cat([i for i, _ in self._test_parts])
            order = index.argsort()
            self.test_index = index[order]
            self.test_scores = torch.cat([s for _, s in self._test_parts])[order]
