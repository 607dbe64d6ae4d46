"""Entry points behind ``kinetix train / test / predict``: :func:`fit`, :func:`test`, :func:`predict`.

The config's ``task`` picks a task module (:mod:`kinetix.engine.classification` or
:mod:`kinetix.engine.detection`) that builds the LightningModule and LightningDataModule and
evaluates; the trainer (:mod:`kinetix.engine.trainer`), checkpoints, run folders and the keep-rate
schedule are shared and set up here.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch

from kinetix.config import config_to_yaml
from kinetix.errors import ConfigError
from kinetix.models import create_model

from . import classification, detection
from .checkpoint import PeriodicCheckpoint, resolve_checkpoint
from .datamodule import resolve_data_settings
from .optim import KeepRateSchedule
from .task import checkpoint_config, load_weights, model_from_checkpoint
from .trainer import RUN_DIR_ENV, build_trainer, make_run_dir, quiet_lightning

TASKS = {"classification": classification, "detection": detection}

__all__ = ["TASKS", "checkpoint_config", "fit", "load_weights", "make_run_dir", "predict", "task_module", "test"]


def task_module(cfg):
    """The task module of a config (``task: classification | detection``)."""
    try:
        return TASKS[cfg.task]
    except KeyError:
        raise ConfigError(f"task: unknown task {cfg.task!r}; one of {', '.join(TASKS)}") from None


def fit(cfg, resume: str | Path | None = None, callbacks=(), **trainer_overrides) -> dict:
    """Train from a config; ``resume`` continues a run from a checkpoint folder or a run folder
    (its latest checkpoint).

    Returns ``{"run_dir", "checkpoint", "best", "metrics", "module", "trainer"}``."""
    quiet_lightning()
    owns_env = RUN_DIR_ENV not in os.environ  # this process launches; DDP children inherit it
    try:
        return _fit(cfg, resume, callbacks, **trainer_overrides)
    finally:
        if owns_env:
            os.environ.pop(RUN_DIR_ENV, None)


def _fit(cfg, resume, callbacks, **trainer_overrides) -> dict:
    task = task_module(cfg)
    ckpt = resolve_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    else:
        run_dir = make_run_dir(cfg)
    os.environ.setdefault(RUN_DIR_ENV, str(run_dir))  # DDP children inherit it; fit() removes it
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, dm = task.build(cfg, "fit")
    ckpt_dir = run_dir / "checkpoints"
    module.meta["checkpoint_dir"] = str(ckpt_dir)
    saver = PeriodicCheckpoint(ckpt_dir, cfg.train.checkpoint_every_n_steps, cfg.train.keep_last, task.MONITOR)
    start, shrink = cfg.schedule.keep_rate_start_epochs, cfg.schedule.keep_rate_shrink_epochs
    if start or shrink:  # ahead of the user's callbacks
        callbacks = [KeepRateSchedule(start, shrink), *callbacks]
    trainer = build_trainer(cfg, run_dir, "fit", [saver, *callbacks], **trainer_overrides)
    if trainer.is_global_zero:
        name = "config.yaml" if ckpt is None else f"config-resume-{ckpt.name}.yaml"
        (run_dir / name).write_text(config_to_yaml(cfg))
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best = ckpt_dir / "best"
    return {
        "run_dir": run_dir,
        "checkpoint": resolve_checkpoint(ckpt_dir) if trainer.is_global_zero else None,
        "best": best if best.exists() else None,
        "metrics": metrics,
        "module": module,
        "trainer": trainer,
    }


def default_report_dir(cfg, checkpoint: str | Path) -> Path:
    """Where ``test`` writes its reports by default: ``<checkpoint>/eval`` (``eval-reversed``)."""
    ckpt = Path(checkpoint)
    base = resolve_checkpoint(ckpt) if not ckpt.is_file() else ckpt.parent
    return base / ("eval-reversed" if cfg.eval.reverse_frames else "eval")


def test(cfg, checkpoint: str | Path, out_dir: str | Path | None = None, **options) -> dict:
    """Evaluate ``checkpoint`` on the config's test (or val) split; reports go to ``out_dir``
    (default: :func:`default_report_dir`); the result's ``report_dir`` says where."""
    quiet_lightning()
    task = task_module(cfg)
    torch.manual_seed(cfg.seed)
    return task.evaluate(cfg, checkpoint, out_dir or default_report_dir(cfg, checkpoint), **options)


def predict(
    videos,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    *,
    topk: int = 5,
    views: tuple[int, int] | None = None,
    aggregate: str | None = None,
) -> list[dict]:
    """Top-k predictions for video files from a kinetix checkpoint (folder, run folder or
    ``model.safetensors``: model, classes and data settings come from it) or from a registered
    model's published weights (``model_name``; with ``checkpoint`` a weights file for it).

    Views, aggregation and test views are the checkpoint config's (``eval.*``) unless given, so
    ``predict`` scores a video exactly as ``test`` scores it."""
    missing = [str(v) for v in videos if not Path(v).exists()]
    if missing:
        raise ConfigError(f"no such video: {', '.join(missing)}")
    if checkpoint is None and model_name is None:
        raise ConfigError("pass checkpoint=CKPT (a trained kinetix checkpoint) or model_name=NAME")
    if checkpoint is not None:
        model, cfg, class_names = model_from_checkpoint(checkpoint, model_name)
    else:
        model, cfg, class_names = create_model(model_name, pretrained=True).eval(), None, None
    settings = resolve_data_settings(model.pretrained_cfg, cfg.data if cfg else None, cfg.eval if cfg else None)
    if views is not None:
        settings = settings.with_views(views)
    aggregate = aggregate or (cfg.eval.aggregate if cfg else "logits")
    return classification.predict_videos(model, videos, settings, class_names, topk, aggregate)
