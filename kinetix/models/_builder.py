"""Loading weights into registered models and converting foreign checkpoints.

Each model file may define ``checkpoint_filter_fn(state_dict, model) -> state_dict`` that maps a
foreign layout (official repo, mmaction2, Hugging Face, torchvision, scenic) onto kinetix names.
Loading is strict: a mismatch is an error that lists the missing and unexpected keys.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from kinetix.errors import CheckpointError
from kinetix.utils.state_dict import read_safetensors_metadata, read_state_dict, save_safetensors

from ._pretrained import PretrainedCfg


def filter_fn_for(model: nn.Module):
    """The ``checkpoint_filter_fn`` of the file that defines ``type(model)`` (or ``None``)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _short(keys, n=8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def convert_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``state_dict`` onto ``model``'s names with the model file's filter (if the keys differ)."""
    own = model.state_dict()
    if set(state_dict) == set(own):
        return dict(state_dict)
    fn = filter_fn_for(model)
    return dict(fn(state_dict, model)) if fn is not None else dict(state_dict)


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "") -> None:
    """``load_state_dict(strict=True)`` with a readable error (missing/unexpected/shape keys).

    When the only mismatch is the classifier's shape, the classifier is reset to the checkpoint's
    number of classes first (``model.reset_classifier``)."""
    own = model.state_dict()
    bad_shape = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    head = _classifier_keys(model)
    if bad_shape and head and set(bad_shape) <= head and hasattr(model, "reset_classifier"):
        weight_key = next(k for k in sorted(head) if k.endswith("weight"))
        model.reset_classifier(int(state_dict[weight_key].shape[0]))
        if hasattr(model, "pretrained_cfg"):
            model.pretrained_cfg = model.pretrained_cfg.replace(
                num_classes=int(state_dict[weight_key].shape[0])
            )
        own = model.state_dict()
        bad_shape = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = set(own) - set(state_dict)
    unexpected = set(state_dict) - set(own)
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if bad_shape:
            parts.append(
                "shape mismatch: "
                + _short(
                    f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in bad_shape
                )
            )
        raise CheckpointError(
            f"{source or 'checkpoint'} does not fit {type(model).__name__}: "
            + "; ".join(parts)
            + ". Check the model name and its arguments (num_frames, num_classes, variant)."
        )
    bad = [
        k
        for k, v in state_dict.items()
        if v.is_floating_point() and not v.is_meta and not bool(torch.isfinite(v).all())
    ]  # meta tensors (shape checks) hold no values
    if bad:
        raise CheckpointError(
            f"{source or 'checkpoint'}: {len(bad)} tensor(s) hold NaN or infinite values ({_short(bad, 4)}); "
            "the weights are broken (a diverged run?). Use an earlier checkpoint"
        )
    model.load_state_dict(state_dict, strict=True)


def classifier_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(qualified name, module)`` of ``model.get_classifier()``, or ``None`` if it has none."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        for prefix, mod in model.named_modules():
            if mod is head:
                return prefix, head
    return None


def _classifier_keys(model: nn.Module) -> set[str]:
    found = classifier_module(model)
    if found is None:
        return set()
    prefix, head = found
    return {f"{prefix}.{k}" if prefix else k for k in head.state_dict()}


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weights file (kinetix safetensors or a foreign checkpoint) into ``model`` strictly."""
    sd = read_state_dict(path)
    load_state_dict_strict(model, _converted(model, sd, path), source=str(path))
    return model


def _converted(model: nn.Module, sd: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """``convert_state_dict`` whose errors (from the model file's filter) name the file."""
    try:
        return convert_state_dict(model, sd)
    except CheckpointError as e:
        if str(path) in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from None


def load_pretrained(model: nn.Module, cfg: PretrainedCfg) -> nn.Module:
    """Load the weights a :class:`PretrainedCfg` points at (local file, or the hub when online)."""
    if cfg.file and Path(cfg.file).exists():
        return load_checkpoint(model, cfg.file)
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as e:
            raise CheckpointError(
                "pretrained weights live on the Hugging Face hub: `pip install kinetix[hub]`"
            ) from e
        path = hf_hub_download(cfg.hf_hub_id, cfg.file or "model.safetensors")
        return load_checkpoint(model, path)
    raise CheckpointError(
        f"no pretrained weights are published for tag {cfg.tag!r} of this model; convert an official "
        "checkpoint with `kinetix convert` and pass it as checkpoint=..."
    )


def save_model_weights(model: nn.Module, path: str | Path, extra_metadata: dict | None = None) -> Path:
    """Save ``model``'s weights (+ name and PretrainedCfg as metadata) as safetensors, atomically."""
    meta = {"format": "pt", "kinetix_model": getattr(model, "model_name", type(model).__name__)}
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, PretrainedCfg):
        meta["pretrained_cfg"] = cfg.to_dict()
    meta.update(extra_metadata or {})
    return save_safetensors(model.state_dict(), path, meta)


@dataclass
class ConversionReport:
    """Which of a model's tensors a conversion filled from the source, and what it left over."""

    total: int  # tensors in the model's state dict
    missing: list[str]  # model tensors the source does not provide (they keep the model's init)
    unused: list[str]  # source tensors that end up in no model tensor
    unchecked: int = 0  # source tensors too many to probe for use

    @property
    def loaded(self) -> int:
        return self.total - len(self.missing)

    def describe(self) -> str:
        parts = [f"{self.loaded} of {self.total} model tensors from the source"]
        if self.missing:
            groups: dict[str, int] = {}
            for k in self.missing:  # by top-level module: "fpn (24), sparse_rcnn (40)"
                groups[k.split(".", 1)[0]] = groups.get(k.split(".", 1)[0], 0) + 1
            by_module = ", ".join(f"{g} ({n})" for g, n in groups.items())
            parts.append(
                f"missing (left at the model's initialisation): {by_module}; e.g. {_short(self.missing, 4)}"
            )
        if self.unused:
            parts.append(f"unused source tensors: {_short(self.unused)}")
        return "; ".join(parts)


def _has_nan(t: torch.Tensor) -> bool:
    return t.is_floating_point() and bool(torch.isnan(t).any())


_PROBE_LIMIT = 64  # source tensors probed one by one for use (the rest are shared with the output)


def conversion_report(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> ConversionReport:
    """Trace a conversion: run the model file's filter with the model's own floating-point tensors
    set to NaN; an output tensor holding NaN came (at least in part) from the model, not the
    source -> ``missing``. A source tensor is ``unused`` when setting it to NaN changes no output.
    ``model`` is left as it was."""
    own = model.state_dict()
    init = {k: v.detach().clone() for k, v in own.items()}
    try:
        with torch.no_grad():
            for v in own.values():
                if v.is_floating_point():
                    v.fill_(float("nan"))
        probe = convert_state_dict(model, state_dict)
        missing = sorted(k for k, v in own.items() if k not in probe or _has_nan(probe[k]))
        shared = {v.untyped_storage().data_ptr() for v in probe.values()}
    finally:
        model.load_state_dict(init)  # (tensors of ``probe`` taken from the model are restored too)
    candidates = [
        k
        for k, v in state_dict.items()
        if v.is_floating_point()
        and v.numel()
        and v.untyped_storage().data_ptr() not in shared
        and not _has_nan(v)
    ]
    unused = []
    for k in candidates[:_PROBE_LIMIT]:
        poisoned = {**state_dict, k: torch.full_like(state_dict[k], float("nan"))}
        try:
            out = convert_state_dict(model, poisoned)
        except (KeyError, ValueError, RuntimeError, CheckpointError):
            continue  # the filter looks at it: used
        if not any(_has_nan(v) for v in out.values()):
            unused.append(k)
    return ConversionReport(len(own), missing, sorted(unused), max(0, len(candidates) - _PROBE_LIMIT))


def convert_with_report(
    model: nn.Module, src: str | Path, out: str | Path, *, allow_partial: bool = False
) -> tuple[Path, ConversionReport]:
    """Convert a foreign checkpoint for ``model``: it must provide every model tensor (else
    :class:`CheckpointError` listing the missing ones, unless ``allow_partial``), load strictly,
    and is then written as safetensors. Returns the path and the :class:`ConversionReport`."""
    sd = read_state_dict(src)
    bad = [
        k
        for k, v in sd.items()
        if v.is_floating_point() and not v.is_meta and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"{src}: {len(bad)} tensor(s) hold NaN or infinite values ({_short(bad, 4)}); the weights "
            "are broken (a diverged run?). Use another checkpoint"
        )
    _converted(model, sd, src)  # a layout the model file's filter refuses: an error naming the file
    report = conversion_report(model, sd)
    if report.missing and not allow_partial:
        raise CheckpointError(
            f"{src}: a partial checkpoint for {type(model).__name__}: {report.describe()}. Check the "
            "model name and its arguments, or pass --allow-partial to convert it anyway (the missing "
            "tensors keep the model's random initialisation)"
        )
    load_state_dict_strict(model, _converted(model, sd, src), source=str(src))
    meta = {"converted_from": Path(src).name}
    if report.missing:
        meta["converted_missing"] = report.missing
    return save_model_weights(model, out, meta), report


def convert_checkpoint(
    model: nn.Module, src: str | Path, out: str | Path, *, allow_partial: bool = False
) -> Path:
    """Convert a foreign checkpoint for ``model``, verify it is complete and loads strictly, write
    safetensors (see :func:`convert_with_report`)."""
    return convert_with_report(model, src, out, allow_partial=allow_partial)[0]


def weights_metadata(path: str | Path) -> dict[str, str]:
    return read_safetensors_metadata(path)
