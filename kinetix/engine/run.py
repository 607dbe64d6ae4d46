"""Entry points behind ``kinetix train / test / predict``: :func:`fit`, :func:`test`, :func:`predict`.

The config's ``task`` picks a task module (``kinetix.engine.classification``,
``kinetix.engine.detection``) that builds the LightningModule and LightningDataModule and evaluates;
everything else (trainer, devices, DDP, precision, checkpoints, run folders) is shared here.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint

from kinetix.errors import CheckpointError, ConfigError

from .badsamples import BadSampleTracker
from .checkpoint import (
    EMA_FILE,
    MANIFEST,
    MODEL_FILE,
    KinetixCheckpointIO,
    PeriodicCheckpoint,
    read_checkpoint,
    read_manifest,
    resolve_checkpoint,
)
from .optim import KeepRateSchedule

TASKS = {"classification": "kinetix.engine.classification", "detection": "kinetix.engine.detection"}
_RUN_DIR_ENV = "KINETIX_RUN_DIR"  # shared by DDP ranks launched by Lightning
log = logging.getLogger(__name__)


def task_module(cfg):
    name = TASKS.get(cfg.task)
    if name is None:
        raise ConfigError(f"task: unknown task {cfg.task!r}; one of {', '.join(TASKS)}")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise ConfigError(f"task {cfg.task!r} is not available in this installation") from e
        raise


def _launched_externally() -> bool:
    """torchrun / SLURM started every rank itself (all ranks must agree on the run folder)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def make_run_dir(cfg) -> Path:
    """``output_dir/name``; if it exists already, ``name-v1``, ``name-v2``, ... (never overwritten).

    DDP children launched by Lightning inherit the parent's choice; under torchrun/SLURM every rank
    uses ``output_dir/name`` as is (give each run its own name)."""
    if os.environ.get(_RUN_DIR_ENV):
        return Path(os.environ[_RUN_DIR_ENV])
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
    if not _launched_externally():
        v = 0
        while run_dir.exists() and any(run_dir.iterdir()):
            v += 1
            run_dir = base.with_name(f"{base.name}-v{v}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
    t = cfg.train
    if stage == "fit":
        check_devices(cfg)
    strategy = t.strategy
    if strategy == "ddp" and t.accelerator == "cpu":
        strategy = "ddp"  # gloo on CPU, chosen by Lightning
    kwargs = dict(
        accelerator=t.accelerator,
        devices=t.devices if stage == "fit" else 1,
        num_nodes=t.num_nodes if stage == "fit" else 1,
        strategy=strategy if stage == "fit" else "auto",
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
        logger=pl.loggers.CSVLogger(str(run_dir), name="logs") if stage == "fit" else False,
        plugins=[KinetixCheckpointIO()],
        callbacks=list(callbacks),
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def _quiet_lightning() -> None:
    import logging

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


def fit(cfg, resume: str | Path | None = None, callbacks=(), **trainer_overrides) -> dict:
    """Train from a config; ``resume`` continues a run from a checkpoint (or a run folder's latest).

    Returns ``{"run_dir", "checkpoint", "best", "metrics", "module", "trainer"}``."""
    _quiet_lightning()
    owns_env = _RUN_DIR_ENV not in os.environ  # this process launches; DDP children inherit it
    try:
        return _fit(cfg, resume, callbacks, **trainer_overrides)
    finally:
        if owns_env:
            os.environ.pop(_RUN_DIR_ENV, None)


def _fit(cfg, resume, callbacks, **trainer_overrides) -> dict:
    from kinetix.config import config_to_yaml

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
    os.environ.setdefault(_RUN_DIR_ENV, str(run_dir))  # DDP children inherit it; fit() removes it
    ckpt_dir = run_dir / "checkpoints"
    module.meta["checkpoint_dir"] = str(ckpt_dir)
    saver = PeriodicCheckpoint(
        ckpt_dir,
        cfg.train.checkpoint_every_n_steps,
        cfg.train.keep_last,
        monitor=getattr(task, "MONITOR", "val/top1"),
    )
    start, shrink = cfg.schedule.keep_rate_start_epochs, cfg.schedule.keep_rate_shrink_epochs
    if start or shrink:  # ahead of the user's callbacks
        callbacks = [KeepRateSchedule(start, shrink), *callbacks]
    tracker = BadSampleTracker(cfg.data.max_bad_fraction)
    trainer = build_trainer(cfg, run_dir, "fit", [saver, tracker, *callbacks], **trainer_overrides)
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
        "bad_samples": {k: v for k, v in tracker.counts().items() if k != "test"},
        "module": module,
        "trainer": trainer,
    }


def saved_config(checkpoint: str | Path):
    """The resolved config a checkpoint was trained with (its manifest's copy)."""
    from kinetix.config import config_from_dict

    ckpt = resolve_checkpoint(checkpoint)
    data = read_manifest(ckpt).get("config")
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{ckpt / MANIFEST}: holds no config; the checkpoint was not written by kinetix train")
    return config_from_dict(data, str(ckpt / MANIFEST))


_RUN_ONLY_KEYS = {"train.progress_bar", "train.output_dir", "train.name", "data.num_workers"}


def config_differences(saved, given) -> list[str]:
    """``"key: saved -> given"`` for every key whose value differs (keys that do not change what
    is trained, such as the progress bar or the number of loader workers, are left out)."""
    from kinetix.config import config_to_dict

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
            f"{source}: does not fit the model of this config ({cfg_model(module)}): {'; '.join(parts)}. "
            "Resume with the config the run was trained with"
        )


def cfg_model(module) -> str:
    cfg = getattr(module, "cfg", None)
    return cfg.model.name if cfg is not None else type(module).__name__


def load_weights(module, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into ``module.model`` (and ``module.ema``): a checkpoint folder,
    a run folder (its latest checkpoint) or a bare ``.safetensors`` / foreign weights file."""
    from kinetix.models import load_checkpoint

    path = Path(checkpoint)
    if path.is_file():
        load_checkpoint(module.model, path)
        if getattr(module, "ema", None) is not None:
            module.ema.module.load_state_dict(module.model.state_dict())
        return
    path = resolve_checkpoint(path)
    load_checkpoint(module.model, path / MODEL_FILE)
    if getattr(module, "ema", None) is not None:
        src = path / EMA_FILE if (path / EMA_FILE).exists() else path / MODEL_FILE
        load_checkpoint(module.ema.module, src)


def checkpoint_config(checkpoint: str | Path):
    """The resolved config stored in a checkpoint (folder or weights file)."""
    from kinetix.config import config_from_dict

    path = Path(checkpoint)
    if path.is_file() and path.suffix == ".safetensors":
        from kinetix.utils.state_dict import read_metadata_json

        config = read_metadata_json(path, "config", dict)
        if not config:
            raise CheckpointError(f"{path}: carries no kinetix config; pass a config file or --model")
        return config_from_dict(config, str(path))
    return config_from_dict(read_manifest(path)["config"], str(resolve_checkpoint(path) / "manifest.json"))


def test(cfg, checkpoint: str | Path, out_dir: str | Path | None = None, **options) -> dict:
    """Evaluate ``checkpoint`` on the config's test (or val) split; reports go to ``out_dir``
    (default: ``<checkpoint>/eval``)."""
    _quiet_lightning()
    task = task_module(cfg)
    ckpt = Path(checkpoint)
    if out_dir is None:
        base = resolve_checkpoint(ckpt) if not ckpt.is_file() else ckpt.parent
        tag = "eval-reversed" if cfg.eval.reverse_frames else "eval"
        out_dir = base / tag
    torch.manual_seed(cfg.seed)
    return task.evaluate(cfg, checkpoint, out_dir, **options)


def predict(
    videos,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    *,
    topk: int = 5,
    views: tuple[int, int] | None = None,
    aggregate: str = "logits",
) -> list[dict]:
    """Top-k predictions for video files from a kinetix checkpoint (folder, run folder or
    ``model.safetensors``: model, classes and data settings come from it) or from a registered
    model's published weights (``model_name``; with ``checkpoint`` a weights file for it)."""
    from kinetix.models import create_model
    from kinetix.utils.state_dict import read_metadata_json, read_safetensors_metadata

    from .classification import predict_videos
    from .datamodule import resolve_data_settings

    missing = [str(v) for v in videos if not Path(v).exists()]
    if missing and len(missing) == len(videos):  # (some missing: each is reported, the rest predicted)
        raise ConfigError(f"no such video: {', '.join(missing)}")
    if checkpoint is None and model_name is None:
        raise ConfigError("pass --checkpoint CKPT (a trained kinetix checkpoint) or --model NAME")
    class_names = None
    cfg = None
    if checkpoint is not None:
        path = Path(checkpoint)
        weights = path if path.is_file() else resolve_checkpoint(path) / MODEL_FILE
        if weights.suffix == ".safetensors":
            meta = read_safetensors_metadata(weights)
            class_names = read_metadata_json(weights, "class_names", list, meta)
            config = read_metadata_json(weights, "config", dict, meta)
            if config:
                from kinetix.config import config_from_dict

                cfg = config_from_dict(config, str(weights))
        name = model_name or (cfg.model.name if cfg is not None else None)
        if name is None:
            raise CheckpointError(f"{weights}: does not say which model it is; pass --model NAME")
        kwargs = dict(cfg.model.kwargs) if cfg is not None and model_name is None else {}
        if cfg is not None and cfg.model.num_frames is not None and model_name is None:
            kwargs["num_frames"] = cfg.model.num_frames
        if class_names:
            kwargs["num_classes"] = len(class_names)
        model = create_model(name, checkpoint=str(weights), **kwargs)
    else:
        model = create_model(model_name, pretrained=True)
    data_cfg = cfg.data if cfg is not None else None
    settings = resolve_data_settings(model.pretrained_cfg, data_cfg, None)
    if views is not None:
        settings = settings.__class__(**{**settings.__dict__, "test_views": tuple(views)})
    source = str(checkpoint) if checkpoint is not None else f"{model_name} (published weights)"
    return predict_videos(model, videos, settings, class_names, topk, aggregate, source=source)
