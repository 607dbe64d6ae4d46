"""Keyframe-centric token pruning (KTP) of EVAD (Chen et al., "Efficient Video Action Detection
with Token Dropout and Context Refinement", ICCV 2023), for any joint-attention video ViT.

Tokens are ordered key tokens first: ``(B, N, C)`` with the ``K`` key tokens at the front, always
kept. The key tokens are the ``S = h·w`` tokens of the keyframe (the central time slice ``t // 2``),
preceded by any prefix (CLS) tokens, which are treated exactly like keyframe tokens (``K = P + S``).
A pruning block runs attention explicitly (the probabilities are needed), scores every non-key token
by the attention it receives, averaged over all queries and heads with the key-query rows weighted
by ``keyframe_weight`` (w_kf), keeps the best ``ceil(keep_rate·N) − K`` of them (none if that is
negative: a block keeps ``max(ceil(keep_rate·N), K)`` tokens in all) and runs its MLP on the kept set
only. Other blocks are unchanged (SDPA).

* :class:`Block` / :class:`KTPBlock` / :func:`make_blocks`: EVAD's encoder blocks,
  ``forward(x, idx, num_key) -> (x, idx)``; ``idx (B, N − K)`` tracks the position (among the
  non-key tokens of the full clip) of every non-key token, for the detector's map restoration.
* :class:`KTPSpaceTimeBlock`: a joint :class:`~.spacetime.SpaceTimeBlock` (same parameter names) that
  prunes; ``forward(x, grid)`` with ``K = num_prefix_tokens + h·w`` taken from ``grid``. The
  recognisers (VideoMAE, ViViT Model 1, TimeSformer joint) place it at :func:`default_prune_layers`.
* :func:`keyframe_first`: time- or space-major token layouts → prefix, keyframe slice, other slices.
* :func:`pruning_blocks` / :func:`scheduled_keep_rate`: the pruning blocks of a model and EViT's
  keep-rate warm-up, used by the engine's ``schedule.keep_rate_*`` settings.

Kept tokens are re-sorted by position (``sort_kept=True``, default); the released code keeps them in
score order (``sort_kept=False``), which only matters to the head that restores the feature map.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import Attention
from .drop import DropPath
from .mlp import Mlp
from .spacetime import SpaceTimeBlock


def default_prune_layers(depth: int) -> tuple[int, ...]:
    """0-based pruning blocks: ``depth·k // 4`` for k = 1, 2, 3 (a quarter, half and three quarters
    deep), duplicates removed. ViT-B (12): (3, 6, 9), EVAD's 4th, 7th, 10th blocks; ViT-L (24):
    (6, 12, 18), its 7th, 13th, 19th; depth 2: (0, 1)."""
    return tuple(sorted({depth * k // 4 for k in (1, 2, 3)}))


def check_keep_rate(keep_rate: float) -> float:
    if not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    return keep_rate


def resolve_prune_layers(depth: int, keep_rate: float, prune_layers) -> frozenset[int]:
    """Validated pruning positions; empty at ``keep_rate == 1`` (the unpruned model)."""
    check_keep_rate(keep_rate)
    if keep_rate == 1:
        return frozenset()
    layers = default_prune_layers(depth) if prune_layers is None else tuple(prune_layers)
    if any(not 0 <= i < depth for i in layers):
        raise ValueError(f"prune_layers must be 0-based block indices below depth {depth}, got {layers}")
    return frozenset(layers)


def scheduled_keep_rate(target: float, progress: float) -> float:
    """EViT's keep-rate warm-up (Liang et al., "Not All Patches are What You Need", ICLR 2022, §4):
    a cosine from 1.0 at ``progress`` 0 down to ``target`` at ``progress`` ≥ 1 (clamped)."""
    p = min(max(progress, 0.0), 1.0)
    return target + (1.0 - target) * 0.5 * (1.0 + math.cos(math.pi * p))


def pruning_blocks(model: nn.Module) -> list[nn.Module]:
    """Every token-pruning block of ``model`` (their ``keep_rate`` attribute is read per forward)."""
    return [m for m in model.modules() if isinstance(m, (KTPBlock, KTPSpaceTimeBlock))]


def num_kept(keep_rate: float, num_tokens: int, num_key: int) -> int:
    """Non-key tokens kept out of ``num_tokens`` (key tokens included): ``max(ceil(rate·N) − K, 0)``."""
    return max(math.ceil(keep_rate * num_tokens) - num_key, 0)


def keep_tokens(x: torch.Tensor, score: torch.Tensor, num_key: int, n_keep: int, sort_kept: bool = True):
    """The key tokens and the ``n_keep`` best-scoring others.

    ``x (B, N, C)``, ``score (B, N − K)`` → ``(B, K + n_keep, C)`` and the kept positions among the
    non-key tokens ``(B, n_keep)``, or ``x`` itself and ``None`` when nothing is dropped (as the
    released code: order untouched)."""
    _, N, C = x.shape
    if n_keep == N - num_key:
        return x, None
    keep = score.topk(n_keep, dim=1).indices  # (B, n_keep), by score
    if sort_kept:
        keep = keep.sort(1).values  # by position
    others = x[:, num_key:].gather(1, keep[..., None].expand(-1, -1, C))  # (B, n_keep, C)
    return torch.cat([x[:, :num_key], others], 1), keep


def attention_with_importance(
    attn: Attention, x: torch.Tensor, num_key: int, keyframe_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention that also returns the KTP importance of the non-key tokens.

    ``x (B, N, C)`` → ``out (B, N, C)`` (before ``proj``) and ``score (B, N − K)`` =
    ``Σ_h Σ_i w_i · softmax_j(q_i·k_j·scale)[j] / (H·N)`` over columns ``j ≥ K``, with ``w_i = w_kf``
    for key queries ``i < K`` and 1 otherwise (the released code's mean over queries and heads).

    On CPU (and on the meta device, so that counted GMACs match) both come from two fused
    flash-attention passes (:func:`_flash_importance`, ≈2.1× one attention instead of ≈4× for
    materialised probabilities); elsewhere from :func:`explicit_attention_importance`. Both are
    matmuls the FLOP counter sees."""
    B, N, C = x.shape
    q, k, v = attn.qkv_heads(x)  # 3 x (B, H, N, hd)
    # torch.onnx's translation of the flash kernel's logsumexp output is wrong: explicit when exporting
    if q.device.type in _FLASH_DEVICES and not torch.compiler.is_exporting():
        p = attn.attn_drop if attn.training else 0.0
        out, lse = _FLASH_CPU(q, k, v, p, scale=attn.scale)  # (B, H, N, hd), (B, H, N)
        score = _flash_importance(q.detach(), k.detach(), lse.detach(), num_key, keyframe_weight, attn.scale)
    else:
        out, score = explicit_attention_importance(q, k, v, num_key, keyframe_weight, attn.scale)
    return out.transpose(1, 2).reshape(B, N, C), score


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # returns (out, logsumexp)
_FLASH_DEVICES = ("cpu", "meta")  # meta: model_complexity counts what the CPU runs


@torch.no_grad()
def _flash_importance(q, k, lse, num_key: int, keyframe_weight: float, scale: float) -> torch.Tensor:
    """``Σ_h Σ_i w_i exp(s·q_i·k_j − lse_i) / (H·N)`` for the non-key keys ``j``.

    The sum over queries is a log-sum-exp with the roles swapped: ``k_j`` queries the ``q_i`` with
    the additive bias ``log w_i − lse_i``. The bias rides in one extra channel
    (``[s·k_j, 1] · [q_i, bias_i]``; zero-padded to a multiple of 8), so a second flash pass
    returns ``log score`` per head without materialising ``(N, N)`` probabilities."""
    B, H, N, d = q.shape
    if num_key == N:  # only key tokens left (the flash kernel fails on empty queries)
        return q.new_zeros(B, 0, dtype=torch.float32)
    bias = -lse.float()  # (B, H, N)
    if keyframe_weight != 1.0:
        bias[..., :num_key] += math.log(keyframe_weight)
    pad = q.new_zeros(1, 1, 1, 1, dtype=torch.float32).expand(B, H, -1, -(d + 1) % 8)
    kj = k[:, :, num_key:].float()
    new_q = torch.cat([kj * scale, torch.ones_like(kj[..., :1]), pad.expand(-1, -1, N - num_key, -1)], -1)
    new_k = torch.cat([q.float(), bias[..., None], pad.expand(-1, -1, N, -1)], -1)  # (B, H, N, d')
    _, lse_t = _FLASH_CPU(new_q, new_k, new_k, scale=1.0)  # (B, H, N − K); the values are unused
    return lse_t.exp().sum(1) / (H * N)


def explicit_attention_importance(
    q, k, v, num_key: int, keyframe_weight: float, scale: float, chunk: int = 256
):
    """Reference form: softmax probabilities materialised ``chunk`` queries at a time.

    ``q, k, v (B, H, N, hd)`` → ``out (B, H, N, hd)``, ``score (B, N − K)``."""
    B, H, N, _ = q.shape
    kt = k.transpose(-2, -1) * scale  # (B, H, hd, N)
    outs, score = [], q.new_zeros(B, N - num_key)
    for s in range(0, N, chunk):
        p = (q[:, :, s : s + chunk] @ kt).softmax(-1)  # (B, H, c, N)
        outs.append(p @ v)  # (B, H, c, hd)
        col = p[..., num_key:].detach()  # (B, H, c, N − K)
        n_kf = min(max(num_key - s, 0), col.shape[2])  # key queries in this chunk
        score += keyframe_weight * col[:, :, :n_kf].sum((1, 2)) + col[:, :, n_kf:].sum((1, 2))
    return torch.cat(outs, 2), score / (H * N)


class Block(nn.Module):
    """Pre-norm ViT block (VideoMAE keys: ``norm1, attn.{qkv,q_bias,v_bias,proj}, norm2, mlp``).

    ``forward(x, idx, num_key) -> (x, idx)``: the signature shared with :class:`KTPBlock`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qv_bias_only=True)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None, num_key: int = 0):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x))), idx


class KTPBlock(Block):
    """A :class:`Block` that prunes non-key tokens between its attention and its MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        keep_rate: float,
        keyframe_weight: float = 1.0,
        sort_kept: bool = True,
        **kw,
    ):
        super().__init__(dim, num_heads, **kw)
        self.keep_rate = check_keep_rate(keep_rate)  # read per forward (the engine's warm-up sets it)
        self.keyframe_weight, self.sort_kept = keyframe_weight, sort_kept

    def forward(self, x: torch.Tensor, idx: torch.Tensor, num_key: int):
        out, score = attention_with_importance(self.attn, self.norm1(x), num_key, self.keyframe_weight)
        x = x + self.drop_path(self.attn.proj_drop(self.attn.proj(out)))
        x, keep = keep_tokens(
            x, score, num_key, num_kept(self.keep_rate, x.shape[1], num_key), self.sort_kept
        )
        idx = idx if keep is None else idx.gather(1, keep)
        return x + self.drop_path(self.mlp(self.norm2(x))), idx


class KTPSpaceTimeBlock(SpaceTimeBlock):
    """A joint-attention :class:`~.spacetime.SpaceTimeBlock` that prunes between attention and MLP.

    Same arguments and parameter names as ``SpaceTimeBlock`` (``attention`` must be ``"joint"``),
    plus keyword-only ``keep_rate``, ``keyframe_weight`` and ``sort_kept``. ``forward(x, grid)``:
    ``x (B, P + N, C)`` in key-first order (:func:`keyframe_first`), ``grid = (t, h, w)`` of the full
    clip → ``(B, max(ceil(keep_rate·(P + N)), P + h·w), C)``, key tokens first."""

    def __init__(
        self, *args, keep_rate: float, keyframe_weight: float = 1.0, sort_kept: bool = True, **kwargs
    ):
        super().__init__(*args, **kwargs)
        if self.attention != "joint":
            raise ValueError(f"token pruning needs joint attention, got {self.attention!r}")
        self.keep_rate = check_keep_rate(keep_rate)  # read per forward (the engine's warm-up sets it)
        self.keyframe_weight, self.sort_kept = keyframe_weight, sort_kept
        self._stages = [self._attend_and_prune]  # the MLP of SpaceTimeBlock.forward then runs on the kept set

    def _attend_and_prune(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        num_key = self.num_prefix_tokens + grid[1] * grid[2]
        h, score = attention_with_importance(self.attn, self.norm1(x), num_key, self.keyframe_weight)
        x = self._add_branch(x, h, self.attn, None, self._keep(x))  # x + proj(h), as the joint stage
        n_keep = num_kept(self.keep_rate, x.shape[1], num_key)
        return keep_tokens(x, score, num_key, n_keep, self.sort_kept)[0]

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}, keyframe_weight={self.keyframe_weight}"


def keyframe_first_index(
    num_slices: int, slice_len: int, num_prefix_tokens: int = 0, space_major: bool = False, device=None
) -> torch.Tensor:
    """Token order ``(P + t·S,)``: the prefix, then the keyframe slice ``t // 2``, then the other slices
    in time order, for patch tokens stored time-major ``(t, S)`` or space-major ``(S, t)``."""
    t, P = num_slices, num_prefix_tokens
    pos = torch.arange(t * slice_len, device=device) + P
    pos = pos.view(slice_len, t).t() if space_major else pos.view(t, slice_len)  # (t, S) token index
    key = t // 2
    return torch.cat(
        [torch.arange(P, device=device), pos[key], pos[:key].flatten(), pos[key + 1 :].flatten()]
    )


def keyframe_first(
    x: torch.Tensor, num_slices: int, num_prefix_tokens: int = 0, space_major: bool = False
) -> tuple[torch.Tensor, int]:
    """``(B, P + t·S, C)`` → the same tokens in :func:`keyframe_first_index` order (one gather), and the
    keyframe slot ``t // 2``."""
    S = (x.shape[1] - num_prefix_tokens) // num_slices
    order = keyframe_first_index(num_slices, S, num_prefix_tokens, space_major, x.device)
    return x.index_select(1, order), num_slices // 2


def make_blocks(
    depth: int,
    dim: int,
    num_heads: int,
    keep_rates: list[float],
    keyframe_weight: float = 1.0,
    sort_kept: bool = True,
    drop_path_rate: float = 0.0,
    **kw,
) -> nn.ModuleList:
    """``depth`` EVAD blocks; block ``i`` is a :class:`KTPBlock` where ``keep_rates[i] < 1``."""
    dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # (python: works on the meta device)
    return nn.ModuleList(
        KTPBlock(dim, num_heads, r, keyframe_weight, sort_kept, drop_path=d, **kw)
        if r < 1
        else Block(dim, num_heads, drop_path=d, **kw)
        for r, d in zip(keep_rates, dpr)
    )
