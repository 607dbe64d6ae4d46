"""Checkpoints: a folder per checkpoint, written atomically, weights in safetensors.

Layout of one checkpoint (``run/checkpoints/step-00000120/``)::

    model.safetensors     weights of the model (plain keys: loads with create_model(checkpoint=...));
                          metadata: model name, PretrainedCfg, resolved config, class names
    ema.safetensors       EMA weights (when train.ema)
    training_state.pt     optimiser, schedulers, loop progress, data position (no code: read with
                          torch.load(weights_only=True))
    config.yaml           the resolved config (file + overrides)
    manifest.json         kinetix/torch/av/lightning versions, git commit, config, dataset
                          fingerprint, epoch, step, metrics — written last

A checkpoint is written into a hidden temporary folder beside its destination and renamed into
place, so a crash (even SIGKILL) never leaves a half-written checkpoint under a real name. Lightning
reads and writes checkpoints through :class:`KinetixCheckpointIO`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import av
import lightning
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors.torch import load_file

from kinetix import __version__
from kinetix.errors import CheckpointError
from kinetix.utils.state_dict import load_pickle_safely, save_safetensors

MODEL_FILE, EMA_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "training_state.pt"
MANIFEST, CONFIG_FILE = "manifest.json", "config.yaml"
_PREFIXES = {"model.": MODEL_FILE, "ema.module.": EMA_FILE}
_STEP_DIR = re.compile(r"^step-(\d+)$")


def git_commit(path: Path | None = None) -> str | None:
    root = path or Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    return {
        "kinetix": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "av": av.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Write a Lightning checkpoint dict as a kinetix checkpoint folder, atomically (replacing
    ``path`` if it is a kinetix checkpoint folder already)."""
    path = Path(path)
    if path.exists() and not (path / MANIFEST).exists():
        raise CheckpointError(f"{path} exists and is not a kinetix checkpoint; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        ckpt = dict(checkpoint)
        meta = dict(ckpt.get("kinetix", {}))
        state_dict = ckpt.pop("state_dict", {})
        files: dict[str, dict[str, torch.Tensor]] = {}
        rest = {}
        for k, v in state_dict.items():
            prefix = next((p for p in _PREFIXES if k.startswith(p)), None)
            if prefix is None:
                rest[k] = v
            else:
                files.setdefault(_PREFIXES[prefix], {})[k[len(prefix) :]] = v
        st_meta = {
            "kinetix_model": meta.get("model_name", ""),
            "pretrained_cfg": meta.get("pretrained_cfg", {}),
            "config": meta.get("config", {}),
            "class_names": meta.get("class_names"),
        }
        for name, tensors in files.items():
            save_safetensors(tensors, tmp / name, st_meta)
        ckpt["state_dict_rest"] = rest
        torch.save(ckpt, tmp / STATE_FILE)
        if meta.get("config_yaml"):
            (tmp / CONFIG_FILE).write_text(meta["config_yaml"])
        manifest = {
            **environment(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "model": meta.get("model_name"),
            "dataset_fingerprint": meta.get("dataset_fingerprint"),
            "metrics": meta.get("metrics", {}),
            "bad_samples": meta.get("bad_samples", {}),  # unreadable samples skipped so far, per split
            "class_names": meta.get("class_names"),
            "files": [*sorted(p.name for p in tmp.iterdir()), MANIFEST],
            "config": meta.get("config", {}),
        }
        _write_json(tmp / MANIFEST, manifest)
        if path.exists():  # swap: old -> trash, tmp -> path, drop trash
            trash = path.parent / f".old-{path.name}-{os.getpid()}"
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint. Pass a checkpoint folder or a run folder.")
    if not (path / MANIFEST).exists() or not (path / STATE_FILE).exists():
        raise CheckpointError(
            f"{path}: not a complete kinetix checkpoint (needs {MANIFEST} and {STATE_FILE}); "
            "it may be from an interrupted write or another tool"
        )


def read_checkpoint(path: str | Path) -> dict:
    """Reassemble the Lightning checkpoint dict written by :func:`write_checkpoint`."""
    path = resolve_checkpoint(path)
    _check_dir(path)
    try:
        ckpt = load_pickle_safely(path / STATE_FILE)  # tensors and plain data only, never code
    except CheckpointError as e:
        raise CheckpointError(
            f"{str(e).rstrip('.')}. An unreadable training state means the checkpoint is damaged or not from kinetix; "
            "use another checkpoint of the run (RUN/checkpoints/step-*)"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path / STATE_FILE}: not a kinetix training state ({type(ckpt).__name__})")
    state_dict = dict(ckpt.pop("state_dict_rest", {}))
    for prefix, name in _PREFIXES.items():
        if (path / name).exists():
            try:
                tensors = load_file(str(path / name))
            except Exception as e:
                raise CheckpointError(
                    f"{path / name}: unreadable weights ({e}); the checkpoint is damaged. Use another "
                    "checkpoint of the run (RUN/checkpoints/step-*)"
                ) from None
            state_dict.update({prefix + k: v for k, v in tensors.items()})
    ckpt["state_dict"] = state_dict
    return ckpt


def read_manifest(path: str | Path) -> dict:
    path = resolve_checkpoint(path)
    _check_dir(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{path / MANIFEST}: not valid JSON ({e}); the checkpoint is damaged. Use another "
            "checkpoint of the run (RUN/checkpoints/step-*)"
        ) from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path / MANIFEST}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete ``step-*`` checkpoints in ``folder`` (or ``folder/checkpoints``), oldest first."""
    folder = Path(folder)
    if (folder / "checkpoints").is_dir():
        folder = folder / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / MANIFEST).exists()
    ]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the latest complete one in a run / checkpoints folder."""
    path = Path(path)
    if path.name == MODEL_FILE or path.name == MANIFEST:
        path = path.parent
    if (path / MANIFEST).exists():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder. Check the path.")
    raise CheckpointError(
        f"{path}: holds no complete kinetix checkpoint (a folder with {MANIFEST}); "
        "pass a checkpoint folder such as RUN/checkpoints/step-00000100 or RUN/checkpoints/best"
    )


class KinetixCheckpointIO(CheckpointIO):
    """Lightning checkpoint IO writing/reading kinetix checkpoint folders."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        write_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return read_checkpoint(path)

    def remove_checkpoint(self, path) -> None:
        path = Path(path)
        if (path / MANIFEST).exists():
            shutil.rmtree(path)


class PeriodicCheckpoint(Checkpoint):
    """Save ``step-N`` checkpoints every ``every_n_steps`` optimiser steps and at every epoch end
    (keeping the last ``keep_last``), and ``best`` when the monitored metric improves.

    Every saved checkpoint carries the state of every callback *after* this epoch's updates (the
    best score here; early stopping, top-k of other callbacks): Lightning runs ``Checkpoint``
    callbacks last, and the best score is updated before the step is saved, so a resumed run
    that gets worse never replaces a better ``best``."""

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int | None = None,
        keep_last: int = 2,
        monitor: str = "val/top1",
    ):
        self.dirpath = Path(dirpath)
        self.every_n_steps, self.keep_last, self.monitor = every_n_steps, max(1, keep_last), monitor
        self.best: float | None = None
        self._last_saved_step = -1

    def _save(self, trainer, name: str) -> Path:
        path = self.dirpath / name
        trainer.save_checkpoint(path, weights_only=False)
        return path

    def _prune(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        for old in list_checkpoints(self.dirpath)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def save_step(self, trainer) -> Path:
        path = self._save(trainer, f"step-{trainer.global_step:08d}")
        self._last_saved_step = trainer.global_step
        self._prune(trainer)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n, step = self.every_n_steps, trainer.global_step
        if n and step > 0 and step % n == 0 and step != self._last_saved_step:
            self.save_step(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last_saved_step = -1  # the epoch-end state replaces a same-step mid-epoch save
        value = trainer.callback_metrics.get(self.monitor)
        improved = value is not None and (self.best is None or float(value) > self.best)
        if improved:
            self.best = float(value)  # before saving: the step checkpoint must carry it
        self.save_step(trainer)
        if improved:
            self._save(trainer, "best")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
