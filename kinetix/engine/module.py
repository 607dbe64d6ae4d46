"""``ClassificationModule``: the LightningModule that trains and evaluates any registered recogniser.

Input batches are dicts ``{"video": float (B, C, T, H, W) or (B, V, C, T, H, W), "label": (B,)}``;
the model maps ``(B, C, T, H, W)`` to logits ``(B, K)``. Training: cross-entropy with label smoothing,
optional mixup/CutMix (soft targets), partial BN, EMA of the weights. Validation/test: multi-view
aggregation (:mod:`kinetix.engine.multiview`), optionally on time-reversed clips.

Reproducibility: the global RNG (dropout, drop-path, mixup) is re-seeded at every step from
``(seed, global_step, rank)``, so a run resumed from a mid-epoch checkpoint draws the same numbers
as an uninterrupted one.
"""

from __future__ import annotations

import hashlib

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import CheckpointError, KinetixError

from .checkpoint import list_checkpoints
from .ema import ModelEMA
from .metrics import ClassificationMeter
from .multiview import predict_views
from .optim import build_optimizer, build_scheduler


class TrainingDivergedError(KinetixError):
    """The loss became NaN or infinite; training stopped before the weights were updated."""


def diverged_message(module: pl.LightningModule, loss: torch.Tensor) -> str:
    """What happened, what is left on disk (only what really is) and what to change (only settings
    that are not already so)."""
    cfg = module.cfg
    ckpt_dir = module.meta.get("checkpoint_dir")
    found = list_checkpoints(ckpt_dir) if ckpt_dir else []
    if found:
        kept = f"the last good checkpoint is {found[-1]} (resume from it with --resume)"
    else:
        kept = "no checkpoint was written before this step, so a new run has to start from scratch"
    fixes = [f"lower optim.lr (now {cfg.optim.lr:g})"]
    if not cfg.schedule.warmup_epochs:
        fixes.append("add warm-up (schedule.warmup_epochs)")
    if cfg.train.gradient_clip_val is None:
        fixes.append("set train.gradient_clip_val")
    if cfg.train.precision not in ("32-true", "32", "64-true", "64"):
        fixes.append(f"use train.precision=32-true (now {cfg.train.precision})")
    return (
        f"loss is {loss.item()} at epoch {module.current_epoch}, step {module.global_step}: training "
        f"stopped before this update; {kept}. To fix it: {', '.join(fixes)}"
    )


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def set_partial_bn(model: nn.Module) -> int:
    """TSN partial BN: every BatchNorm but the first is put in eval mode with frozen affine params.

    Returns the number of frozen BatchNorm layers."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns[1:]:
        m.eval()
        m.requires_grad_(False)
    return len(bns[1:])


class ClassificationModule(pl.LightningModule):
    """Train/evaluate ``model`` with the settings of a :class:`kinetix.config.Config`.

    Args:
        model: a registered recogniser (``forward(x) -> logits``).
        cfg: the resolved config (``optim``, ``schedule``, ``train``, ``eval`` sections are read).
        class_names: names of the classes (saved with every checkpoint).
        meta: extra metadata saved with every checkpoint (dataset fingerprint, ...).
    """

    def __init__(self, model: nn.Module, cfg, class_names: list[str] | None = None, meta: dict | None = None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.num_classes = int(model.pretrained_cfg.num_classes)
        self.class_names = class_names or [str(i) for i in range(self.num_classes)]
        self.meta = dict(meta or {})
        t = cfg.train
        if t.partial_bn:
            set_partial_bn(model)
        self.ema = ModelEMA(model, t.ema_decay) if t.ema else None
        self.mixer = None
        if t.mixup_alpha > 0 or t.cutmix_alpha > 0:
            from kinetix.data.transforms import MixupCutmix

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
        self.test_outputs: list[
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        ] = []  # (index, scores, label)

    # ----------------------------------------------------------------------------------- model
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def train(self, mode: bool = True):
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        if mode and self.cfg.train.partial_bn:
            set_partial_bn(self.model)
        return self

    # -------------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch, batch_idx) -> None:
        seed = derive_seed(self.cfg.seed, self.global_step, self.global_rank, 1)
        torch.manual_seed(seed)
        if self.mixer is not None:
            self.mixer.rng = np.random.default_rng(seed)

    def training_step(self, batch, batch_idx):
        x, y = batch["video"], batch["label"]
        if self.cfg.train.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.mixer is not None:
            x, target = self.mixer(x, y)  # soft targets (B, K), label smoothing included
            logits = self.model(x)
            loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise TrainingDivergedError(diverged_message(self, loss))
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        if self.mixer is None:
            acc = (logits.detach().argmax(-1) == y).float().mean() * 100
            self.log("train/top1", acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # once per optimiser step, before checkpoint callbacks run
            self.ema.update(self.model)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.cfg.optim)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        scheduler = build_scheduler(optimizer, self.cfg.schedule, total, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
        self.test_outputs = []

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
        idx = batch.get("index", torch.full_like(batch["label"], -1))
        self.test_outputs.append((idx.cpu(), scores.float().cpu(), batch["label"].cpu()))

    def on_test_epoch_end(self) -> None:
        self.test_results = self._reduce(self.test_meter)

    def predict_step(self, batch, batch_idx):
        return F.softmax(self._scores(batch).float(), dim=-1)

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["kinetix"] = checkpoint_metadata(self)


def checkpoint_metadata(module: pl.LightningModule) -> dict:
    """What kinetix stores beside the weights in every checkpoint of a task module: model name and
    PretrainedCfg, the resolved config (dict and YAML), class names, current metrics, run meta."""
    from kinetix.config import config_to_dict, config_to_yaml

    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items() if v.numel() == 1}
    return {
        "model_name": getattr(module.model, "model_name", type(module.model).__name__),
        "pretrained_cfg": module.model.pretrained_cfg.to_dict(),
        "config": config_to_dict(module.cfg),
        "config_yaml": config_to_yaml(module.cfg),
        "class_names": module.class_names,
        "metrics": metrics,
        **{k: v for k, v in module.meta.items() if k != "checkpoint_dir"},
    }
