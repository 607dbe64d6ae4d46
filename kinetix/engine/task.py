"""The task skeleton shared by classification and detection.

A task (:mod:`kinetix.engine.classification`, :mod:`kinetix.engine.detection`) is a
:class:`TaskModule` subclass plus ``build(cfg, stage)`` and ``evaluate(cfg, checkpoint, out_dir)``.
What every task shares lives here and nowhere else:

* the model: :func:`build_model` (registry name, frames, classes, weights, channels_last) and
  :func:`model_from_checkpoint` (a trained checkpoint back to a ready model, its config and class
  names);
* its data settings: :func:`~kinetix.engine.datamodule.resolve_data_settings` (from the model);
* its optimiser and schedule: :meth:`TaskModule.configure_optimizers` over
  :func:`~kinetix.engine.optim.param_groups` (one parameter-group builder);
* training mechanics: per-step seeding, divergence check, partial BN, EMA, ``torch.compile``,
  checkpoint metadata.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn as nn

from kinetix.config import config_from_dict, config_to_dict, config_to_yaml
from kinetix.errors import CheckpointError, ConfigError, KinetixError
from kinetix.layers.partial_bn import set_partial_bn
from kinetix.models import create_model, load_checkpoint
from kinetix.utils.inference import InferenceModel
from kinetix.utils.state_dict import read_metadata_json, read_safetensors_metadata

from .checkpoint import EMA_FILE, MODEL_FILE, list_checkpoints, read_manifest, resolve_checkpoint
from .datamodule import derive_seed
from .ema import ModelEMA
from .optim import build_optimizer, build_scheduler


class TrainingDivergedError(KinetixError):
    """The loss became NaN or infinite; training stopped before the weights were updated."""


def resolve_path(cfg, value, key: str, must_exist: bool = True) -> Path | None:
    """A path from the config: as given, or relative to ``data.root``; ``key`` names it in errors."""
    if value is None:
        return None
    p = Path(value)
    tried = [p]
    root = Path(cfg.data.root) if cfg.data.root else None
    # relative to data.root too, unless it is written from the same base folder as data.root
    # (data.root: data/k400, path: data/k400/train.csv or data/ssv2/x.json: not joined again)
    same_base = root is not None and root.parts[:1] == p.parts[:1] and not root.is_absolute()
    if root is not None and not p.is_absolute() and not p.exists() and not same_base:
        tried.append(root / p)
    found = next((t for t in tried if t.exists()), None)
    if found is None and must_exist:
        where = " or ".join(str(t) for t in tried)
        raise ConfigError(
            f"{key}: no such file or folder: {where} (relative to {Path.cwd()}); set {key} to its path"
        )
    return found or tried[-1]


def build_model(cfg, num_classes: int | None) -> nn.Module:
    """The config's model (``model.*`` keys) with ``num_classes`` outputs unless the config says."""
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.num_frames is not None:
        kwargs["num_frames"] = cfg.model.num_frames
    if num_classes:
        kwargs.setdefault("num_classes", num_classes)
    model = create_model(
        cfg.model.name, pretrained=cfg.model.pretrained, checkpoint=cfg.model.checkpoint, **kwargs
    )
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compile_model(model: nn.Module, accelerator: str = "auto") -> nn.Module:
    """``torch.compile(model)`` (``train.compile``); its parameters are the model's own.

    On CPU, torch.compile's default backend (inductor) builds C++ kernels: without a C++ compiler
    this is a :class:`ConfigError` up front rather than a crash at the first batch."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ConfigError(
            "train.compile: torch.compile on CPU needs a C++ compiler (g++ or clang++) and none was "
            "found on PATH; install one or set train.compile=false"
        )
    return torch.compile(model)


class TaskModule(pl.LightningModule):
    """What every task's LightningModule shares (subclasses add the steps and metrics).

    Args:
        model: a registered model.
        cfg: the resolved config (``optim``, ``schedule``, ``train``, ``eval`` are read).
        class_names: names of the classes (saved with every checkpoint).
        meta: extra metadata saved with every checkpoint (dataset fingerprint, data settings, ...).
    """

    def __init__(self, model: nn.Module, cfg, class_names: list[str] | None = None, meta: dict | None = None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.num_classes = int(model.pretrained_cfg.num_classes)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        self.meta = dict(meta or {})
        t = cfg.train
        if t.partial_bn:
            set_partial_bn(model)
        self.ema = ModelEMA(model, t.ema_decay) if t.ema else None
        # the compiled wrapper shares the model's parameters; kept out of the module tree so that
        # checkpoints hold one copy under the model's own names
        self.__dict__["net"] = compile_model(model, t.accelerator) if t.compile else model

    def forward(self, x):
        return self.net(x)

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA copy when ``train.ema``, else the model."""
        return self.ema.module if self.ema is not None else self.net

    def run_eval_model_through(self, inference):
        """Put :attr:`eval_model` behind ``inference(model) -> module`` (an inference path such as
        :func:`~kinetix.utils.inference.fast_inference`); returns the backends it ran once the
        evaluation is done (a callable: the choice is made on the first batch)."""
        if self.ema is not None:
            scored = self.ema.module = inference(self.ema.module)
        else:  # ``net`` lives outside the module tree (see __init__)
            scored = self.__dict__["net"] = inference(self.net)
        return scored.used if isinstance(scored, InferenceModel) else lambda: [type(scored).__name__]

    def head_lr_mult(self) -> float:
        """LR multiplier of the head's parameters (``optim.head_lr_mult``; tasks may override)."""
        return self.cfg.optim.head_lr_mult

    def train(self, mode: bool = True):
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        if mode and self.cfg.train.partial_bn:
            set_partial_bn(self.model)
        return self

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # dropout, drop-path, mixup: the same numbers whether or not the run was resumed
        torch.manual_seed(derive_seed(self.cfg.seed, self.global_step, self.global_rank, 1))

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop before the update when the loss is NaN/inf on any rank."""
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise TrainingDivergedError(diverged_message(self, loss))

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # once per optimiser step, before checkpoint callbacks run
            self.ema.update(self.model)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.cfg.optim, head_lr_mult=self.head_lr_mult())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        scheduler = build_scheduler(optimizer, self.cfg.schedule, total, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["kinetix"] = checkpoint_metadata(self)


def diverged_message(module: TaskModule, loss: torch.Tensor) -> str:
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


def checkpoint_metadata(module: TaskModule) -> dict:
    """What kinetix stores beside the weights in every checkpoint of a task module: model name and
    PretrainedCfg, the resolved config (dict and YAML), class names, current metrics, run meta."""
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


# ------------------------------------------------------------------------------ trained checkpoints
def load_weights(module, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into ``module.model`` (and ``module.ema``): a checkpoint folder,
    a run folder (its latest checkpoint) or a bare ``.safetensors`` / foreign weights file."""
    path = Path(checkpoint)
    ema = getattr(module, "ema", None)
    if path.is_file():
        load_checkpoint(module.model, path)
        if ema is not None:
            ema.module.load_state_dict(module.model.state_dict())
        return
    path = resolve_checkpoint(path)
    load_checkpoint(module.model, path / MODEL_FILE)
    if ema is not None:
        load_checkpoint(ema.module, path / EMA_FILE if (path / EMA_FILE).exists() else path / MODEL_FILE)


def _weights_file(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path if path.is_file() else resolve_checkpoint(path) / MODEL_FILE


def _metadata(weights: Path) -> dict[str, str]:
    return read_safetensors_metadata(weights) if weights.suffix == ".safetensors" else {}


def checkpoint_config(checkpoint: str | Path):
    """The resolved config stored in a checkpoint (folder, run folder or ``.safetensors`` file)."""
    path = Path(checkpoint)
    if path.is_file():
        cfg = read_metadata_json(path, "config", dict, _metadata(path))
        if not cfg:
            raise CheckpointError(f"{path}: carries no kinetix config; pass a config file or --model")
        return config_from_dict(cfg, str(path))
    data = read_manifest(path).get("config")
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{resolve_checkpoint(path) / 'manifest.json'}: holds no kinetix config")
    return config_from_dict(data, str(resolve_checkpoint(path) / "manifest.json"))


def checkpoint_class_names(checkpoint: str | Path) -> list[str] | None:
    """Class names stored with a checkpoint (folder manifest or weights-file metadata), if any."""
    path = Path(checkpoint)
    if path.is_file():
        names = read_metadata_json(path, "class_names", list, _metadata(path))
    else:
        names = read_manifest(path).get("class_names")
    return list(names) if names else None


def model_from_checkpoint(
    checkpoint: str | Path, model_name: str | None = None, num_frames: int | None = None
):
    """``(model, cfg, class_names)`` from a trained checkpoint, ready for inference (eval mode).

    ``checkpoint``: a kinetix checkpoint folder, run folder (latest checkpoint) or weights file;
    the model, its arguments and class names come from its metadata (``cfg`` is ``None`` for a
    weights file without a config, e.g. a converted one: then ``model_name`` says which model it
    is). A checkpoint trained with ``train.ema`` gives its EMA weights, as ``kinetix test`` does.
    ``num_frames`` builds the model for another clip length (e.g. an export for T frames)."""
    weights = _weights_file(checkpoint)
    meta = _metadata(weights)
    cfg_dict = read_metadata_json(weights, "config", dict, meta)
    cfg = config_from_dict(cfg_dict, str(weights)) if cfg_dict else None
    names = read_metadata_json(weights, "class_names", list, meta) or None
    name = model_name or (cfg.model.name if cfg is not None else None)
    if name is None:
        raise CheckpointError(
            f"{weights}: does not say which model it is; name it (--model NAME on the command line)"
        )
    kwargs = {}
    if cfg is not None and model_name is None:
        kwargs = dict(cfg.model.kwargs)
        if cfg.model.num_frames is not None:
            kwargs["num_frames"] = cfg.model.num_frames
    if names:
        kwargs["num_classes"] = len(names)
    if num_frames:
        kwargs["num_frames"] = num_frames
    model = create_model(name, **kwargs)
    ema = weights.parent / EMA_FILE
    use_ema = not Path(checkpoint).is_file() and cfg is not None and cfg.train.ema and ema.exists()
    load_checkpoint(model, ema if use_ema else weights)
    return model.eval(), cfg, names
