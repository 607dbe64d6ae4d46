"""The Lightning ``Trainer`` every task runs on: run folders, devices/DDP, precision, loggers.

:func:`build_trainer` maps the config's ``train`` section onto ``lightning.pytorch.Trainer``;
checkpoints go through kinetix's :class:`~kinetix.engine.checkpoint.KinetixCheckpointIO`
(safetensors folders, atomic), never Lightning's own ``ModelCheckpoint``.

Loggers (``train.loggers``, training only): ``csv`` (default: ``RUN/logs/version_N/metrics.csv``),
``tensorboard`` (``RUN/tensorboard``; needs the optional ``tensorboard`` package), the class name
of any other logger in ``lightning.pytorch.loggers`` (``WandbLogger``, ``MLFlowLogger``, ...), or
the import path of your own ``Logger`` subclass (``mypackage.loggers.MyLogger``); each is built with
``save_dir=RUN`` when it takes one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint

from kinetix.errors import ConfigError

from .checkpoint import KinetixCheckpointIO

RUN_DIR_ENV = "KINETIX_RUN_DIR"  # shared by DDP ranks launched by Lightning
log = logging.getLogger(__name__)


def launched_externally() -> bool:
    """torchrun / SLURM started every rank itself (all ranks must agree on the run folder)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def make_run_dir(cfg) -> Path:
    """``output_dir/name``; if it exists already, ``name-v1``, ``name-v2``, ... (never overwritten).

    DDP children launched by Lightning inherit the parent's choice; under torchrun/SLURM every rank
    uses ``output_dir/name`` as is (give each run its own name)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    out = Path(cfg.train.output_dir)
    blocking = next((q for q in (out, *out.parents) if q.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(
            f"train.output_dir: {out}: {blocking} is a file, not a folder; point train.output_dir at a folder"
        )
    base = out / cfg.train.name
    if base.exists() and not base.is_dir():
        raise ConfigError(f"train.name: {base} is a file, not a run folder; choose another train.name")
    run_dir = base
    if not launched_externally():
        v = 0
        while run_dir.exists() and any(run_dir.iterdir()):
            v += 1
            run_dir = base.with_name(f"{base.name}-v{v}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _logger_names(value) -> list[str]:
    names = [value] if isinstance(value, str) else list(value or [])
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"train.loggers must be a list of logger names, got {value!r}")
    return names


def build_logger(name: str, run_dir: Path):
    """One Lightning logger by name (see the module docstring)."""
    key = name.lower()
    if key == "csv":
        return pl.loggers.CSVLogger(str(run_dir), name="logs")
    if key in ("tensorboard", "tensorboardlogger"):
        if (
            importlib.util.find_spec("tensorboard") is None
            and importlib.util.find_spec("tensorboardX") is None
        ):
            raise ConfigError(
                "train.loggers: tensorboard needs the tensorboard package: `pip install tensorboard` "
                "(or use the default csv logger)"
            )
        return pl.loggers.TensorBoardLogger(str(run_dir), name="tensorboard")
    known = {n.lower(): n for n in dir(pl.loggers) if n.endswith("Logger") and n != "Logger"}
    cls_name = known.get(key) or known.get(key + "logger")
    if cls_name is not None:
        cls = getattr(pl.loggers, cls_name)
    elif "." in name:  # a user's Logger subclass by import path
        module, _, cls_name = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"train.loggers: cannot import {name!r} ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, pl.loggers.Logger)):
            raise ConfigError(f"train.loggers: {name} is not a lightning.pytorch.loggers.Logger subclass")
    else:
        raise ConfigError(
            f"train.loggers: unknown logger {name!r}; use csv, tensorboard, one of "
            f"{', '.join(sorted(known.values()))} or the import path of a Logger subclass"
        )
    kwargs = {"save_dir": str(run_dir)} if "save_dir" in inspect.signature(cls).parameters else {}
    try:
        return cls(**kwargs)
    except ModuleNotFoundError as e:  # the logger's own package is an optional dependency
        raise ConfigError(f"train.loggers: {cls_name} needs `pip install {e.name}`") from None


def check_devices(cfg) -> None:
    """Several devices asked for without a GPU: on CPU each "device" is a whole training process
    (memory times N), which is never what ``devices: 8`` meant on a GPU config."""
    t = cfg.train
    many = t.devices == -1 or (isinstance(t.devices, int) and t.devices > 1)
    if many and t.accelerator in ("auto", "gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.devices={t.devices} with train.accelerator={t.accelerator}, but no GPU is present "
            "(torch.cuda.is_available() is False). Set train.devices=1 to train on the CPU, or "
            f"train.accelerator=cpu and train.strategy=ddp to run {t.devices} CPU processes on purpose"
        )


def warn_short_run(cfg) -> list[str]:
    """Warnings (logged, and returned) for a run too short to do what its config implies."""
    t, sch = cfg.train, cfg.schedule
    msgs = []
    if cfg.data.val_ann and t.epochs < t.val_every_n_epochs:
        msgs.append(
            f"train.epochs={t.epochs} is shorter than train.val_every_n_epochs={t.val_every_n_epochs}: "
            "nothing will be validated and no `best` checkpoint written"
        )
    warmup = sch.keep_rate_start_epochs + sch.keep_rate_shrink_epochs
    if warmup and t.epochs <= warmup:
        msgs.append(
            f"train.epochs={t.epochs} ends within the keep-rate warm-up (schedule.keep_rate_start_epochs"
            f" + keep_rate_shrink_epochs = {warmup:g}): the model never trains at its target "
            "model.kwargs.keep_rate, and checkpoints are evaluated at another keep rate than it will use"
        )
    for m in msgs:
        log.warning(m)
    return msgs


def build_trainer(cfg, run_dir: Path, stage: str = "fit", callbacks=(), **overrides) -> pl.Trainer:
    """A ``Trainer`` for ``stage`` (``fit``: devices/nodes/strategy and loggers of the config;
    ``test``: one device, no logger). ``overrides`` go to the ``Trainer`` as they are."""
    t = cfg.train
    fit = stage == "fit"
    if fit:
        check_devices(cfg)
    loggers = [build_logger(n, run_dir) for n in _logger_names(t.loggers)] if fit else []
    kwargs = dict(
        accelerator=t.accelerator,
        devices=t.devices if fit else 1,
        num_nodes=t.num_nodes if fit else 1,
        strategy=t.strategy if fit else "auto",  # ddp on CPU runs on gloo (Lightning's choice)
        precision=t.precision,
        max_epochs=t.epochs,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        check_val_every_n_epoch=t.val_every_n_epochs,
        log_every_n_steps=t.log_every_n_steps,
        # kinetix's PeriodicCheckpoint (a Checkpoint callback, so Lightning runs it after the other
        # callbacks) writes the checkpoints: safetensors, atomically; Lightning adds none of its own
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # ResumableSampler shards itself
        default_root_dir=str(run_dir),
        logger=loggers or False,
        plugins=[KinetixCheckpointIO()],
        callbacks=list(callbacks),
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def quiet_lightning() -> None:
    """Silence Lightning's messages that do not apply to kinetix runs."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*dataloader is not resumable.*")  # ours is, via the datamodule
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*checkpoint_io.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # EMA copy, partial BN: on purpose
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
