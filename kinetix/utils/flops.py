"""Counting multiply-accumulates (GMACs, what the papers call "FLOPs") and parameters.

Built on ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per MAC) with one fix:
on CPU, ``F.scaled_dot_product_attention`` dispatches to ``_scaled_dot_product_flash_attention_for_cpu``,
which torch's counter does not know and would count as 0. We register the standard SDPA formula
(QK^T and AV matmuls) for it, and the projections + attention of ``nn.MultiheadAttention``'s fused
inference path (``_native_multi_head_attention``), so attention is counted the same on every device
(including the meta device, where ``kinetix models`` counts).
Element-wise ops (softmax, norms, activations) and ``grid_sample`` are not counted, as in the papers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode passes shapes (it wraps custom formulas in its shape_wrapper).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # nn.MultiheadAttention's inference fast path (one fused op, unknown to torch's counter): the
    # q/k/v and output projections plus the QK^T and AV products, in FLOPs (2 per MAC).
    *batch, L, E = query_shape
    S = key_shape[-2]
    b = math.prod(batch)
    return 2 * b * (L * E * E + 2 * S * E * E + L * E * E + 2 * L * S * E)


def _custom_mapping() -> dict:
    mapping = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
        ("_native_multi_head_attention", _native_mha_flop),
    ):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = fn
    return mapping


@dataclass(frozen=True)
class FlopsResult:
    gmacs: float
    params: int
    by_module: dict[str, float]

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def to_dict(self) -> dict:
        return {"gmacs": self.gmacs, "params": self.params}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, inputs, depth: int = 2) -> FlopsResult:
    """GMACs of one forward pass of ``model`` on ``inputs`` (a tensor or a tuple of tensors),
    parameters, and GMACs per module down to ``depth`` levels."""
    args = inputs if isinstance(inputs, tuple | list) else (inputs,)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=depth, custom_mapping=_custom_mapping())
    try:
        with counter:
            model(*args)
    finally:
        model.train(was_training)
    by_module = {name: sum(v for v in ops.values()) / 2e9 for name, ops in counter.get_flop_counts().items()}
    return FlopsResult(gmacs=counter.get_total_flops() / 2e9, params=count_params(model), by_module=by_module)
