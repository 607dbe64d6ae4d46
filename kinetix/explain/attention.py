"""Attention maps and attention rollout for the video transformers (TimeSformer, ViViT, VideoMAE).

The probabilities come from the one :class:`~kinetix.layers.attention.Attention` module
(:func:`~kinetix.layers.attention.record_attention`: explicit ``softmax(q k^T)`` only while recording,
averaged over heads). Each attention *stage* of a :class:`~kinetix.layers.spacetime.SpaceTimeBlock`
(joint, divided time / space, axial time / width / height, factorised, L+G local / global) is turned
into one dense row-stochastic ``(P+N, P+N)`` token-mixing matrix ``M`` over the prefix (CLS) and patch
tokens (:func:`stage_matrix`): a stage that attends along some grid axes is block-diagonal over the
other axes; the CLS token, repeated in every group and averaged back, gets the mean of its rows;
tokens that do not take part keep an identity row.

* :func:`attention_maps` — the last block's stages: the CLS row (CLS-to-patch attention) where the
  stage includes the CLS token, otherwise the attention each patch receives (mean over the patch
  queries). VideoMAE and ViViT Models 3/4 have no CLS token, so they always get the received-attention
  map ("mean attention"). TimeSformer divided gives a ``space`` (CLS) and a ``time`` (received) map.
* :func:`attention_rollout` — Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020:
  ``R = Â_L ⋯ Â_1`` with ``Â = 0.5 M + 0.5 I`` (the residual) for every stage, read from the CLS row,
  or — for mean-pooled models without CLS — the mean of the patch rows. Computed as a row vector
  propagated down the stages (``O(S N²)``, no matrix product).

Maps are ``(B, t, h, w)`` on the token grid (time-major), before any normalisation. ViViT Model 2
multiplies each time index's spatial map by the temporal encoder's weight of that time index;
TimeSformer space-only runs frames as separate images (each frame's map, averaged CLS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from kinetix.errors import ConfigError
from kinetix.layers.attention import AttentionLog, record_attention
from kinetix.layers.spacetime import SpaceTimeBlock
from kinetix.models.timesformer import TimeSformer
from kinetix.models.videomae import VideoMAE
from kinetix.models.vivit import ViViT

# SpaceTimeBlock scheme -> attention module prefix -> (stage name, grid axes or None = all tokens,
# whether the prefix tokens take part). Mirrors the stages SpaceTimeBlock builds for each scheme.
STAGES: dict[str, dict[str, tuple[str, tuple[str, ...] | None, bool]]] = {
    "joint": {"": ("joint", None, True)},
    "local_global": {"local_": ("local", None, True), "": ("global", None, True)},
    "divided": {"temporal_": ("time", ("t",), False), "": ("space", ("h", "w"), True)},
    "space": {"": ("space", ("h", "w"), True)},
    "axial": {"temporal_": ("time", ("t",), False), "width_": ("width", ("w",), False),
              "": ("height", ("h",), True)},
    "factorised": {"": ("space", ("h", "w"), True), "temporal_": ("time", ("t",), False)},
}  # fmt: skip
_AXES = {"space_major": ("h", "w", "t"), "time_major": ("t", "h", "w")}  # order of the patch tokens


@dataclass
class _Encoder:
    """A stack of SpaceTimeBlocks as the model runs it: ``grid`` is what the blocks receive and
    ``batch`` how many block-batch rows make one clip (space-only / ViViT-2: frames as images)."""

    blocks: list[tuple[str, SpaceTimeBlock]]
    grid: tuple[int, int, int]
    num_prefix: int
    layout: str
    batch: int = 1
    frames_as_images: bool = False  # joint blocks over one frame: their stage is spatial


def stage_matrix(
    probs: torch.Tensor,
    grid: tuple[int, int, int],
    layout: str,
    num_prefix: int,
    axes: tuple[str, ...] | None,
    with_prefix: bool,
) -> torch.Tensor:
    """Dense ``(B, P+N, P+N)`` mixing matrix of one attention stage from its head-averaged
    probabilities ``probs``: ``(B, P+N, P+N)`` for all-token stages, else ``(B*G, P'+L, P'+L)`` with
    ``G`` groups of ``L`` tokens along ``axes`` (``P' = P`` if ``with_prefix`` else 0)."""
    if axes is None:
        return probs
    P, N = num_prefix, grid[0] * grid[1] * grid[2]
    order = _AXES[layout]
    size = dict(zip(("t", "h", "w"), grid))
    dims = [order.index(a) for a in axes]
    others = [d for d in range(3) if d not in dims]
    idx = torch.arange(N, device=probs.device).view(*(size[a] for a in order))  # patch index
    idx = idx.permute(*others, *dims).reshape(-1, int(probs.shape[-1]) - (P if with_prefix else 0))
    G, L = idx.shape  # groups, tokens per group
    Pp = P if with_prefix else 0
    p = probs.view(-1, G, Pp + L, Pp + L)  # (B, G, P'+L, P'+L)
    B = p.shape[0]
    M = probs.new_zeros(B, P + N, P + N)
    rows, cols = (P + idx)[:, :, None].expand(G, L, L), (P + idx)[:, None, :].expand(G, L, L)
    M[:, rows, cols] = p[:, :, Pp:, Pp:]  # patch -> patch, block-diagonal over the groups
    flat = P + idx.reshape(-1)  # (G*L,) in group order
    if Pp:
        M[:, :P, :P] = p[:, :, :P, :P].mean(1)  # the CLS copies are averaged back
        M[:, :P, flat] = p[:, :, :P, Pp:].permute(0, 2, 1, 3).reshape(B, P, G * L) / G
        M[:, flat, :P] = p[:, :, Pp:, :P].reshape(B, G * L, P)
    elif P:
        M[:, :P, :P] = torch.eye(P, dtype=M.dtype, device=M.device)  # the prefix does not take part
    return M


def _block_stages(log: AttentionLog, name: str, blk: SpaceTimeBlock, enc: _Encoder):
    """``[(stage name, M (B, P+N, P+N), includes the prefix), ...]`` of one block, in run order."""
    calls = [(n[len(name) + 1 :], p) for n, p in log.calls if n.startswith(name + ".")]
    out = []
    if blk.attention == "factorised_dot":  # one module, two calls: time heads, then space heads
        H, nt = blk.attn.num_heads, blk.num_time_heads
        plan = [(("t",), nt)] if nt else []
        plan += [(("h", "w"), H - nt)] if nt < H else []
        M = sum(
            stage_matrix(p, enc.grid, enc.layout, enc.num_prefix, axes, False) * (heads / H)
            for (axes, heads), (_, p) in zip(plan, calls)
        )
        return [("time+space", M, False)]
    table = STAGES[blk.attention]
    for attr, p in calls:
        stage, axes, with_prefix = table[attr.removesuffix("attn")]
        M = stage_matrix(p, enc.grid, enc.layout, enc.num_prefix, axes, with_prefix)
        out.append((stage, M, with_prefix))
    return out


def _to_grid(vec: torch.Tensor, enc: _Encoder) -> torch.Tensor:
    """Patch part of ``(B*batch, P+N)`` -> ``(B, t, h, w)`` time-major (frames-as-images batches
    are stacked along t)."""
    v = vec[:, enc.num_prefix :]
    order = _AXES[enc.layout]
    size = dict(zip(("t", "h", "w"), enc.grid))
    v = v.reshape(-1, *(size[a] for a in order)).permute(0, *(1 + order.index(a) for a in "thw"))
    return v.reshape(-1, enc.batch * enc.grid[0], *enc.grid[1:])  # (B, t, h, w)


def _encoders(model: nn.Module, grid: tuple[int, int, int]) -> list[_Encoder]:
    blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    if any(not isinstance(b, SpaceTimeBlock) or type(b) is not SpaceTimeBlock for _, b in blocks):
        raise ConfigError(
            f"attention maps need plain SpaceTimeBlocks; {type(model).__name__} with token pruning "
            "(keep_rate < 1) drops tokens between blocks: use keep_rate=1 or `kinetix detect --tokens`"
        )
    t, h, w = grid
    if isinstance(model, TimeSformer):
        if model.attention == "space":
            return [_Encoder(blocks, (1, h, w), 1, "time_major", batch=t, frames_as_images=True)]
        return [_Encoder(blocks, grid, 1, "space_major")]
    if isinstance(model, ViViT):
        if model.model == 2:
            encs = [_Encoder(blocks, (1, h, w), model.num_prefix_tokens, "time_major", batch=t,
                             frames_as_images=True)]  # fmt: skip
            if hasattr(model, "temporal_blocks"):
                tb = [(f"temporal_blocks.{i}", b) for i, b in enumerate(model.temporal_blocks)]
                encs.append(_Encoder(tb, (t, 1, 1), 1, "time_major"))
            return encs
        return [_Encoder(blocks, grid, model.num_prefix_tokens, "time_major")]
    if isinstance(model, VideoMAE):
        return [_Encoder(blocks, grid, 0, "time_major")]
    raise ConfigError(f"attention maps are for TimeSformer, ViViT and VideoMAE, not {type(model).__name__}")


def record(model: nn.Module, clip: torch.Tensor):
    """Run ``model`` on ``clip (B, C, T, H, W)`` recording attention: ``(logits, log, token grid)``."""
    grids = []
    hook = model.patch_embed.register_forward_hook(lambda m, i, o: grids.append(tuple(o[1])))
    try:
        with torch.no_grad(), record_attention(model) as log:
            logits = model(clip)
    finally:
        hook.remove()
    return logits, log, grids[0]


def _temporal_weights(log: AttentionLog, enc: _Encoder, rollout: bool) -> torch.Tensor:
    """ViViT Model 2's temporal encoder: weight of each time index ``(B, t, 1, 1)``."""
    vec = _rollout_vector(log, enc) if rollout else _last_cls_rows(log, enc)[-1][1]
    return _to_grid(vec, enc).reshape(vec.shape[0], -1, 1, 1)


def _last_cls_rows(log: AttentionLog, enc: _Encoder) -> list[tuple[str, torch.Tensor]]:
    name, blk = enc.blocks[-1]
    out = []
    for stage, M, with_prefix in _block_stages(log, name, blk, enc):
        stage = "space" if enc.frames_as_images else stage
        if enc.num_prefix and with_prefix:
            out.append((f"{stage} (CLS)", M[:, 0]))
        else:  # no CLS in this stage: the attention each token receives, mean over patch queries
            out.append((f"{stage} (mean attention)", M[:, enc.num_prefix :].mean(1)))
    return out


def _rollout_vector(log: AttentionLog, enc: _Encoder) -> torch.Tensor:
    stages = [M for name, blk in enc.blocks for _, M, _ in _block_stages(log, name, blk, enc)]
    B, n = stages[0].shape[:2]
    v = stages[0].new_zeros(B, n)
    if enc.num_prefix:
        v[:, 0] = 1.0  # the CLS output
    else:
        v[:, :] = 1.0 / n  # mean pooling over all tokens
    for M in reversed(stages):
        v = 0.5 * torch.einsum("bi,bij->bj", v, M) + 0.5 * v  # v (0.5 M + 0.5 I), per clip
    return v


def attention_maps(model: nn.Module, log: AttentionLog, grid) -> dict[str, torch.Tensor]:
    """``{stage label: (B, t, h, w)}`` of the last block (see the module docstring)."""
    encs = _encoders(model, grid)
    maps = {k: _to_grid(v, encs[0]) for k, v in _last_cls_rows(log, encs[0])}
    if len(encs) > 1:  # ViViT Model 2
        w = _temporal_weights(log, encs[1], rollout=False)
        maps = {f"{k} x time (CLS)": m * w for k, m in maps.items()}
    return maps


def attention_rollout(model: nn.Module, log: AttentionLog, grid) -> torch.Tensor:
    """Rollout map ``(B, t, h, w)`` (see the module docstring)."""
    encs = _encoders(model, grid)
    out = _to_grid(_rollout_vector(log, encs[0]), encs[0])
    if len(encs) > 1:
        out = out * _temporal_weights(log, encs[1], rollout=True)
    return out


def has_cls(model: nn.Module) -> bool:
    return getattr(model, "num_prefix_tokens", 0) > 0
