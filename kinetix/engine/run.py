"""Entry points behind ``kinetix train / test / predict``: :func:`fit`, :func:`test`, :func:`predict`.

The config's ``task`` picks a task module (:mod:`kinetix.engine.classification` or
:mod:`kinetix.engine.detection`) that builds the LightningModule and LightningDataModule and
evaluates; the trainer (:mod:`kinetix.engine.trainer`), checkpoints, run folders and the keep-rate
schedule are shared and set up here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback

from kinetix.config import config_from_dict, config_to_dict, config_to_yaml
from kinetix.errors import CheckpointError, ConfigError
from kinetix.models import create_model
from kinetix.utils.inference import fast_inference
from kinetix.utils.state_dict import atomic_path

from . import classification, detection
from .badsamples import BadSampleTracker
from .checkpoint import MANIFEST, PeriodicCheckpoint, read_checkpoint, read_manifest, resolve_checkpoint
from .datamodule import resolve_data_settings
from .optim import KeepRateSchedule
from .task import checkpoint_config, load_weights, model_from_checkpoint
from .trainer import RUN_DIR_ENV, build_trainer, check_devices, make_run_dir, quiet_lightning, warn_short_run

TASKS = {"classification": classification, "detection": detection}
log = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "checkpoint_config",
    "config_differences",
    "fit",
    "load_weights",
    "make_run_dir",
    "predict",
    "saved_config",
    "task_module",
    "test",
]


def task_module(cfg):
    """The task module of a config (``task: classification | detection``)."""
    try:
        return TASKS[cfg.task]
    except KeyError:
        raise ConfigError(f"task: unknown task {cfg.task!r}; one of {', '.join(TASKS)}") from None


def fit(cfg, resume: str | Path | None = None, callbacks=(), **trainer_overrides) -> dict:
    """Train from a config; ``resume`` continues a run from a checkpoint folder or a run folder
    (its latest checkpoint).

    Resuming, the checkpoint is read whole and checked against the config's model before anything
    is written; differences from the config it was trained with are logged, every one of them.

    Returns ``{"run_dir", "checkpoint", "best", "metrics", "bad_samples", "module", "trainer"}``."""
    quiet_lightning()
    owns_env = RUN_DIR_ENV not in os.environ  # this process launches; DDP children inherit it
    try:
        return _fit(cfg, resume, callbacks, **trainer_overrides)
    finally:
        if owns_env:
            os.environ.pop(RUN_DIR_ENV, None)


def _fit(cfg, resume, callbacks, **trainer_overrides) -> dict:
    # everything that can be refused is checked before anything is written
    check_devices(cfg)
    warn_short_run(cfg)
    task = task_module(cfg)
    ckpt = resolve_checkpoint(resume) if resume is not None else None
    state = None
    if ckpt is not None:
        state = read_checkpoint(ckpt)  # every file of it readable (no code unpickled)
        differences = config_differences(saved_config(ckpt), cfg)
        if differences:
            log.warning(
                "resuming %s with a config that differs from the one it was trained with:\n  %s",
                ckpt, "\n  ".join(differences),
            )  # fmt: skip
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, dm = task.build(cfg, "fit")
    if state is not None:
        check_state_fits(module, state["state_dict"], ckpt)
        del state
    if ckpt is not None and ckpt.parent.name == "checkpoints":
        run_dir = ckpt.parent.parent  # continue the run in its own folder
    else:  # a new run (or a standalone checkpoint folder: never written into, nor beside)
        run_dir = make_run_dir(cfg)
    os.environ.setdefault(RUN_DIR_ENV, str(run_dir))  # DDP children inherit it; fit() removes it
    ckpt_dir = run_dir / "checkpoints"
    module.meta["checkpoint_dir"] = str(ckpt_dir)
    saver = PeriodicCheckpoint(
        ckpt_dir, cfg.train.checkpoint_every_n_steps, cfg.train.keep_last, task.MONITOR
    )
    start, shrink = cfg.schedule.keep_rate_start_epochs, cfg.schedule.keep_rate_shrink_epochs
    if start or shrink:  # ahead of the user's callbacks
        callbacks = [KeepRateSchedule(start, shrink), *callbacks]
    tracker = BadSampleTracker(cfg.data.max_bad_fraction)
    run_files = [saver, tracker]
    if ckpt is not None:  # written with the resumed run's first checkpoint, not before
        run_files.append(
            WriteWithFirstCheckpoint(run_dir / f"config-resume-{ckpt.name}.yaml", config_to_yaml(cfg))
        )
    trainer = build_trainer(cfg, run_dir, "fit", [*run_files, *callbacks], **trainer_overrides)
    if ckpt is None and trainer.is_global_zero:
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(config_to_yaml(cfg))
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best = ckpt_dir / "best"
    return {
        "run_dir": run_dir,
        "checkpoint": resolve_checkpoint(ckpt_dir) if trainer.is_global_zero else None,
        "best": best if best.exists() else None,
        "metrics": metrics,
        "bad_samples": {k: v for k, v in tracker.counts().items() if k != "test"},
        "module": module,
        "trainer": trainer,
    }


class WriteWithFirstCheckpoint(Callback):
    """Write ``text`` to ``path`` (atomically, on global rank 0) when the run saves its first
    checkpoint. A resume records the config it continues with this way: a resume that fails before
    it has saved anything (an unreadable dataset, a setting that breaks the first step) leaves the
    run folder as it was, with no file claiming that it happened."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = Path(path), text
        self.written = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.written:
            return
        if trainer.is_global_zero:
            with atomic_path(self.path) as tmp:
                tmp.write_text(self.text)
        self.written = True


def saved_config(checkpoint: str | Path):
    """The resolved config a checkpoint was trained with (its manifest's copy)."""
    ckpt = resolve_checkpoint(checkpoint)
    data = read_manifest(ckpt).get("config")
    if not isinstance(data, dict) or not data:
        raise CheckpointError(
            f"{ckpt / MANIFEST}: holds no config; the checkpoint was not written by kinetix train"
        )
    return config_from_dict(data, str(ckpt / MANIFEST))


_RUN_ONLY_KEYS = {"train.progress_bar", "train.output_dir", "train.name", "data.num_workers"}


def config_differences(saved, given) -> list[str]:
    """``"key: saved -> given"`` for every key whose value differs (keys that do not change what
    is trained, such as the progress bar or the number of loader workers, are left out)."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("kwargs", "extra", "flip_label_map"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(config_to_dict(saved)), flat(config_to_dict(given))
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k) and k not in _RUN_ONLY_KEYS]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def check_state_fits(module, state_dict: dict, source) -> None:
    """``CheckpointError`` listing what does not fit when a training checkpoint's weights are not
    those of ``module`` (another model, other arguments)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if own[k].shape != state_dict[k].shape
    )
    if missing or unexpected or shapes:
        parts = [
            f"{what}: {', '.join(keys[:6])}{f', ... ({len(keys)} in all)' if len(keys) > 6 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if keys
        ]
        raise CheckpointError(
            f"{source}: does not fit the model of this config ({module.cfg.model.name}): "
            f"{'; '.join(parts)}. Resume with the config the run was trained with"
        )


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
    inference=fast_inference,
) -> list[dict]:
    """Top-k predictions for video files from a kinetix checkpoint (folder, run folder or
    ``model.safetensors``: model, classes and data settings come from it) or from a registered
    model's published weights (``model_name``; with ``checkpoint`` a weights file for it).

    Views, aggregation and test views are the checkpoint config's (``eval.*``) unless given, so
    ``predict`` scores a video exactly as ``test`` scores it. ``inference(model) -> module`` is the
    inference path (as for :func:`kinetix.engine.classification.evaluate`)."""
    missing = [str(v) for v in videos if not Path(v).exists()]
    if missing and len(missing) == len(videos):  # (some missing: each is reported, the rest predicted)
        raise ConfigError(f"no such video: {', '.join(missing)}")
    if checkpoint is None and model_name is None:
        raise ConfigError("pass checkpoint=CKPT (a trained kinetix checkpoint) or model_name=NAME")
    if checkpoint is not None:
        model, cfg, class_names = model_from_checkpoint(checkpoint, model_name)
    else:
        model, cfg, class_names = create_model(model_name, pretrained=True).eval(), None, None
    settings = resolve_data_settings(
        model.pretrained_cfg, cfg.data if cfg else None, cfg.eval if cfg else None
    )
    if views is not None:
        settings = settings.with_views(views)
    aggregate = aggregate or (cfg.eval.aggregate if cfg else "logits")
    model = inference(model)  # default: the faster of eager and oneDNN, measured on the first batch
    source = str(checkpoint) if checkpoint is not None else f"{model_name} (published weights)"
    return classification.predict_videos(model, videos, settings, class_names, topk, aggregate, source=source)
