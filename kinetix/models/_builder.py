"""Loading weights into registered models and converting foreign checkpoints.

Each model file may define ``checkpoint_filter_fn(state_dict, model) -> state_dict`` that maps a
foreign layout (official repo, mmaction2, Hugging Face, torchvision, scenic) onto kinetix names.
A model file may also define ``CHECKPOINT_FORMATS``, the layouts its filter reads (said in errors).
Loading is strict: a mismatch is an error that lists the missing and unexpected keys. Whatever goes
wrong while a file is converted (a filter's own refusal, or a ``KeyError``/shape error on a layout it
does not know) becomes one :class:`CheckpointError` naming the file, the model, the layouts it reads,
keys of both sides and the fix.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from kinetix.errors import CheckpointError
from kinetix.utils.state_dict import (
    read_safetensors_metadata,
    read_state_dict,
    save_safetensors,
    strip_prefix,
)

from ._pretrained import PretrainedCfg


def filter_fn_for(model: nn.Module):
    """The ``checkpoint_filter_fn`` of the file that defines ``type(model)`` (or ``None``)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _short(keys, n=8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


# what a filter raises on a layout it does not know (a missing name, a tensor of another shape)
_FILTER_ERRORS = (KeyError, IndexError, ValueError, TypeError, RuntimeError)
_FIX = "Check that the model name and its arguments (num_frames, num_classes, variant) match the checkpoint"


def _model_name(model: nn.Module) -> str:
    name = getattr(model, "model_name", None)
    return f"{name} ({type(model).__name__})" if name else type(model).__name__


def _formats(model: nn.Module) -> str:
    """The layouts ``model``'s converter reads (``CHECKPOINT_FORMATS`` of its file)."""
    module = sys.modules.get(type(model).__module__)
    fmt = getattr(module, "CHECKPOINT_FORMATS", None)
    doc = (getattr(getattr(module, "checkpoint_filter_fn", None), "__doc__", None) or "").strip()
    if fmt is None and doc:  # "Official EVAD (...) or VideoMAE-pretrained keys → kinetix. ..."
        fmt = "kinetix weights or " + re.split(r"\s*(?:->|→)", doc, maxsplit=1)[0].replace("``", "")
    return fmt or "kinetix weights of this model"


def _examples(keys, n=4) -> str:
    """A few keys of a state dict, one per top-level module first (``backbone.conv1.weight, fc.bias``)."""
    keys = sorted(k for k in keys if not k.endswith("num_batches_tracked"))
    firsts = {}
    for k in keys:
        firsts.setdefault(re.split(r"[./]", k, maxsplit=1)[0], k)
    picked = list(firsts.values())[:n]
    picked += [k for k in keys if k not in picked][: n - len(picked)]
    return ", ".join(picked) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _saved_for(source, model: nn.Module) -> str:
    """'; the file holds kinetix weights saved for model X: ...' when ``source`` is a kinetix
    safetensors file of another model than ``model``."""
    path = Path(str(source))
    if path.suffix != ".safetensors" or not path.is_file():
        return ""
    try:
        name = read_safetensors_metadata(path).get("kinetix_model")
    except CheckpointError:
        return ""
    if not name or name == getattr(model, "model_name", None):
        return ""
    return f"; the file holds kinetix weights saved for model {name!r}: load it with that model"


def _mismatch_message(model: nn.Module, state_dict, source, reason: str) -> str:
    """The one message for a checkpoint ``model`` cannot take: the file, why, what the model's
    converter reads (with example keys of both sides) and the fix."""
    return (
        f"{source}: not a checkpoint {_model_name(model)} can load: {reason.rstrip('. ')}. "
        f"Expected {_formats(model)}: keys like {_examples(model.state_dict())}; "
        f"got keys like {_examples(state_dict)}. {_FIX}{_saved_for(source, model)}."
    )


def convert_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``state_dict`` onto ``model``'s names with the model file's filter (if the keys differ)."""
    own = model.state_dict()
    if set(state_dict) == set(own):
        return dict(state_dict)
    unwrapped = strip_prefix(state_dict, "module.")  # kinetix weights saved from DataParallel
    if set(unwrapped) == set(own):
        return unwrapped
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
            f"{source or 'checkpoint'} does not fit {_model_name(model)}: "
            + "; ".join(parts)
            + f". It reads {_formats(model)}. {_FIX}{_saved_for(source, model)}."
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
    """``convert_state_dict``; whatever its filter raises on ``sd`` (its own refusal, or a bare
    ``KeyError``/shape error on a layout it does not know) becomes one :class:`CheckpointError`
    naming the file, the model, the layouts it reads and the fix (:func:`_mismatch_message`)."""
    try:
        return convert_state_dict(model, sd)
    except CheckpointError as e:
        reason = str(e).removeprefix(f"{path}: ").removeprefix("state dict: ")
    except _FILTER_ERRORS as e:
        reason = f"its converter cannot read this layout ({type(e).__name__}: {e})"
    raise CheckpointError(_mismatch_message(model, sd, path, reason)) from None


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
        except (*_FILTER_ERRORS, CheckpointError):
            continue  # the filter looks at it: used
        if not any(_has_nan(v) for v in out.values()):
            unused.append(k)
    return ConversionReport(len(own), missing, sorted(unused), max(0, len(candidates) - _PROBE_LIMIT))


def convert_with_report(
    model: nn.Module, src: str | Path, out: str | Path, *, allow_partial: bool = False
) -> tuple[Path, ConversionReport]:
    """Convert a foreign checkpoint for ``model``: its conversion must load strictly (into
    ``model``) and provide every model tensor (else :class:`CheckpointError` listing the missing
    ones, unless ``allow_partial``); it is then written as safetensors. A file of which nothing but
    a classifier maps onto the model is another model's checkpoint, refused whatever
    ``allow_partial`` says. Returns the path and the :class:`ConversionReport`."""
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
    converted = _converted(model, sd, src)  # a layout the filter refuses: an error naming the file
    report = conversion_report(model, sd)
    if not set(model.state_dict()) - set(report.missing) - _classifier_keys(model):
        # nothing (or only a classifier) of the model comes from the file: another model's checkpoint
        raise CheckpointError(
            _mismatch_message(
                model, sd, src, f"{report.loaded} of its {report.total} tensors come from the file"
            )
        )
    # a conversion that cannot load (unexpected keys, other shapes) is refused as such, before the
    # question of completeness (--allow-partial would not help)
    load_state_dict_strict(model, converted, source=str(src))
    if report.missing and not allow_partial:
        raise CheckpointError(
            f"{src}: a partial checkpoint for {_model_name(model)}: {report.describe()}. Check the "
            "model name and its arguments, or pass --allow-partial to convert it anyway (the missing "
            "tensors keep the model's random initialisation)"
        )
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
