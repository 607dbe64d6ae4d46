"""The one model registry: ``@register_model``, ``create_model``, ``list_models``.

Entry points only set hyper-parameters and return a module; builders never inspect the name.
A name may carry a weight tag (``"tsm_r50.k400"``); without one, the first registered tag is used.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from kinetix.errors import ModelArgumentError, ModelNotFoundError

from ._pretrained import PretrainedCfg


@dataclass(frozen=True)
class _Entry:
    name: str
    fn: Callable[..., nn.Module]
    cfgs: dict[str, PretrainedCfg]  # tag -> cfg; first key is the default

    @property
    def module(self) -> str:
        return self.fn.__module__


_REGISTRY: dict[str, _Entry] = {}


def register_model(fn: Callable | None = None, *, cfgs: dict[str, PretrainedCfg] | None = None):
    """Register an entry point under its function name. Duplicate names raise ``ValueError``.

    ``cfgs`` maps weight tags to :class:`PretrainedCfg`; the first is the default. Without it, the
    entry gets a default ``PretrainedCfg()`` under the empty tag.
    """

    def deco(f: Callable[..., nn.Module]):
        name = f.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].module})")
        tagged = {tag: cfg.replace(tag=tag) for tag, cfg in (cfgs or {"": PretrainedCfg()}).items()}
        _REGISTRY[name] = _Entry(name, f, tagged)
        return f

    return deco(fn) if fn is not None else deco


def _split(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def _lookup(name: str) -> tuple[_Entry, PretrainedCfg]:
    arch, tag = _split(name)
    if arch not in _REGISTRY:
        close = difflib.get_close_matches(arch, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See `kinetix models`."
        raise ModelNotFoundError(f"unknown model {arch!r}.{hint}")
    entry = _REGISTRY[arch]
    if tag is None:
        tag = next(iter(entry.cfgs))
    if tag not in entry.cfgs:
        raise ModelNotFoundError(
            f"model {arch!r} has no weights tagged {tag!r}; available: {', '.join(entry.cfgs) or 'none'}"
        )
    return entry, entry.cfgs[tag]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The :class:`PretrainedCfg` of ``name`` (``arch`` or ``arch.tag``)."""
    return _lookup(name)[1]


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    return _lookup(name)[0].fn


def is_model(name: str) -> bool:
    return _split(name)[0] in _REGISTRY


def list_models(pattern: str = "*", *, with_tags: bool = False, include_test: bool = True) -> list[str]:
    """Registered model names matching a glob ``pattern`` (sorted)."""
    out = []
    for name, entry in sorted(_REGISTRY.items()):
        if not include_test and name.startswith("test_"):
            continue
        names = [f"{name}.{t}" if t else name for t in entry.cfgs] if with_tags else [name]
        out += [n for n in names if fnmatch.fnmatch(n, pattern)]
    return out


def create_model(name: str, pretrained: bool = False, checkpoint: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: ``arch`` or ``arch.tag`` (tag selects the weights and their :class:`PretrainedCfg`).
        pretrained: load the tag's weights (local ``cfg.file`` or, with the ``hub`` extra, the hub).
        checkpoint: path of a weights file to load (safetensors, or a foreign checkpoint that the
            model file's ``checkpoint_filter_fn`` converts).
        **kwargs: hyper-parameters passed to the entry point (``num_classes``, ``num_frames``, ...).

    The returned model carries ``model.pretrained_cfg`` updated with the ``num_frames`` and
    ``num_classes`` it was built with.
    """
    entry, cfg = _lookup(name)
    params = inspect.signature(entry.fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = dict(kwargs)
    if "num_classes" not in kwargs and (takes_any or "num_classes" in params):
        kwargs["num_classes"] = cfg.num_classes
    try:
        model = entry.fn(**kwargs)
    except (TypeError, ValueError) as e:  # the entry point / constructor rejects an argument or value
        if not given:
            raise
        accepted = ", ".join(n for n, p in params.items() if p.kind is not p.VAR_KEYWORD)
        raise ModelArgumentError(
            f"model {entry.name!r} cannot be built with {given}: {e}. Check model.kwargs"
            + (f" (the entry point takes: {accepted}, and its model's arguments)" if accepted else "")
        ) from e
    updates = {k: kwargs[k] for k in ("num_frames", "num_classes", "input_size") if k in kwargs}
    model.pretrained_cfg = cfg.replace(**updates)
    model.model_name = entry.name
    if pretrained:
        from ._builder import load_pretrained

        load_pretrained(model, model.pretrained_cfg)
    if checkpoint is not None:
        from ._builder import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model
