"""Optimisers and learning-rate schedules.

Parameter groups (timm/BEiT style):

* no weight decay for the names in ``model.no_weight_decay()`` (exact or as a prefix) and for every
  1-D parameter (biases, norm scales) when ``no_decay_1d``;
* layer-wise LR decay: parameter at depth ``i`` of ``L`` gets ``lr * layer_decay ** (L + 1 - i)``
  (embeddings at depth 0, the classifier at ``L + 1``), depth read from ``blocks.N`` / ``layers.N`` /
  ``layerN`` in the name or from an optional ``model.lr_layer_id(name)``;
* the head (``model.head_parameter_names()``, else ``model.get_classifier()``) gets
  ``lr * head_lr_mult``.

Schedules are per optimiser step: linear warm-up from ``lr * warmup_start_factor``, then cosine to
``lr * min_lr_ratio`` or step decay (``*= gamma`` at each milestone epoch), or constant.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn as nn

from kinetix.errors import ConfigError
from kinetix.layers.token_pruning import pruning_blocks, scheduled_keep_rate
from kinetix.models._builder import classifier_module

_DEPTH = re.compile(r"(?:^|\.)(?:blocks|layers|stages|layer)\.?(\d+)(?:\.|$)")


def _head_names(model: nn.Module) -> set[str]:
    """Parameters that get ``head_lr_mult``: ``model.head_parameter_names()`` when the model says
    (detectors: their detection heads), else the classifier's."""
    custom = getattr(model, "head_parameter_names", None)
    if callable(custom):
        return set(custom())
    found = classifier_module(model)
    if found is None:
        return set()
    prefix, head = found
    return {f"{prefix}.{n}" if prefix else n for n, _ in head.named_parameters()}


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of each parameter for layer-wise LR decay, and the number of layers ``L``.

    Depth 0: stem/embeddings; ``1..L``: numbered blocks in order of appearance; ``L + 1``: the rest
    after the blocks (final norm, classifier)."""
    names = [n for n, _ in model.named_parameters()]
    custom = getattr(model, "lr_layer_id", None)
    if callable(custom):
        ids = {n: int(custom(n)) for n in names}
        return ids, max(ids.values(), default=1) - 1
    # Blocks in order of first appearance; nested indices (layer1.0) count as one level per block.
    order: dict[str, int] = {}
    ids: dict[str, int] = {}
    seen_block = False
    for n in names:
        m = _DEPTH.search(n)
        if m:
            key = n[: m.end()]
            # a block is the prefix up to and including the innermost numbered level
            for mm in _DEPTH.finditer(n):
                key = n[: mm.end()]
            order.setdefault(key, len(order) + 1)
            ids[n] = order[key]
            seen_block = True
        else:
            ids[n] = -1 if seen_block else 0  # before the first block: stem; after: head side
    num_layers = len(order)
    return {n: (num_layers + 1 if i == -1 else i) for n, i in ids.items()}, num_layers


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    layer_decay: float = 1.0,
    head_lr_mult: float = 1.0,
    no_decay_1d: bool = True,
) -> list[dict]:
    """Parameter groups with per-group ``lr`` and ``weight_decay`` (see the module docstring)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    head = _head_names(model)
    ids, num_layers = layer_ids(model) if layer_decay != 1.0 else ({}, 0)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = (no_decay_1d and p.ndim <= 1) or any(name == s or name.startswith(s + ".") for s in skip)
        scale = layer_decay ** (num_layers + 1 - ids[name]) if ids else 1.0
        if name in head:
            scale *= head_lr_mult
        key = (no_decay, scale)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg, head_lr_mult: float | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW over :func:`param_groups` from an ``optim`` config section (``head_lr_mult``:
    overrides ``cfg.head_lr_mult``)."""
    groups = param_groups(
        model,
        cfg.lr,
        cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        head_lr_mult=cfg.head_lr_mult if head_lr_mult is None else head_lr_mult,
        no_decay_1d=cfg.no_decay_1d,
    )
    for g in groups:
        g.pop("names")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def lr_factor(
    step: int,
    *,
    total_steps: int,
    steps_per_epoch: float,
    name: str = "cosine",
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = 0.01,
    min_lr_ratio: float = 0.0,
    milestones: tuple = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (0-based)."""
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup
    if name == "constant":
        return 1.0
    if name == "step":
        epoch = step / steps_per_epoch
        return gamma ** sum(epoch >= m for m in milestones)
    # cosine from the end of warm-up to the last step
    t = (step - warmup) / max(1, total_steps - warmup)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class LRFactor:
    """Picklable-free callable for ``LambdaLR`` (its state is the plain settings dict)."""

    def __init__(self, **settings):
        self.settings = settings

    def __call__(self, step: int) -> float:
        return lr_factor(step, **self.settings)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` from a ``schedule`` config section."""
    fn: Callable[[int], float] = LRFactor(
        total_steps=int(total_steps),
        steps_per_epoch=float(steps_per_epoch),
        name=cfg.name,
        warmup_epochs=cfg.warmup_epochs,
        warmup_start_factor=cfg.warmup_start_factor,
        min_lr_ratio=cfg.min_lr_ratio,
        milestones=tuple(cfg.milestones),
        gamma=cfg.gamma,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


class KeepRateSchedule(pl.Callback):
    """Keep-rate warm-up for token-pruning models (EViT, Liang et al., ICLR 2022, §4).

    Training steps run every pruning block at keep 1.0 for ``start_epochs``, then at
    :func:`~kinetix.layers.token_pruning.scheduled_keep_rate` (a cosine down to the block's own
    ``keep_rate``) over ``shrink_epochs``. Validation, testing and the saved model always use the
    blocks' own rates. The rate is a function of the optimiser step, so resuming needs no state.
    A model without pruning blocks (keep rate 1) trains unchanged, with a warning."""

    def __init__(self, start_epochs: float = 0.0, shrink_epochs: float = 0.0):
        if start_epochs < 0 or shrink_epochs < 0:
            raise ConfigError(
                "schedule.keep_rate_start_epochs / keep_rate_shrink_epochs must be >= 0, got "
                f"{start_epochs} / {shrink_epochs}"
            )
        self.start_epochs, self.shrink_epochs = start_epochs, shrink_epochs
        self.targets: list[tuple[nn.Module, float]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.targets = [(m, m.keep_rate) for m in pruning_blocks(pl_module)]
        if not self.targets and trainer.is_global_zero:  # e.g. the keep-1.0 arm of a comparison
            warnings.warn(
                "schedule.keep_rate_start_epochs / keep_rate_shrink_epochs do nothing: the model prunes no "
                "tokens (model.kwargs.keep_rate is 1)",
                stacklevel=2,
            )
        total = max(1, int(trainer.estimated_stepping_batches))
        self.steps_per_epoch = total / max(1, trainer.max_epochs or 1)

    def progress(self, step: int) -> float:
        """0 until ``start_epochs``, then linear in steps to 1 at ``start + shrink`` epochs."""
        epoch = step / self.steps_per_epoch - self.start_epochs
        if epoch < 0:
            return 0.0
        return 1.0 if self.shrink_epochs == 0 else epoch / self.shrink_epochs

    def _set(self, progress: float | None) -> None:
        for m, target in self.targets:
            m.keep_rate = target if progress is None else scheduled_keep_rate(target, progress)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._set(self.progress(trainer.global_step))

    def on_validation_start(self, trainer, pl_module) -> None:
        self._set(None)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._set(None)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._set(None)
