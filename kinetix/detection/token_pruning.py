"""Keyframe-centric token pruning (KTP) of EVAD (Chen et al., "Efficient Video Action Detection
with Token Dropout and Context Refinement", ICCV 2023).

Tokens are ordered keyframe first: ``(B, N, C)`` with the ``S = h·w`` keyframe tokens at the front,
always kept. A pruning block runs attention explicitly (the probabilities are needed), scores every
non-keyframe token by the attention it receives, averaged over all queries and heads with the
keyframe-query rows weighted by ``keyframe_weight`` (w_kf), keeps the ``ceil(keep_rate·N) − S`` best,
and runs its MLP on the kept set only. Other blocks use SDPA. ``idx (B, N − S)`` tracks the global
position (among the non-keyframe tokens of the full clip) of every non-keyframe token.

Kept tokens are re-sorted by position (``sort_kept=True``, default); the released code keeps them in
score order (``sort_kept=False``), which only matters to the head that restores the feature map.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from kinetix.layers.attention import Attention
from kinetix.layers.drop import DropPath
from kinetix.layers.mlp import Mlp


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


def attention_with_importance(
    attn: Attention, x: torch.Tensor, num_key: int, keyframe_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention that also returns the KTP importance of the non-keyframe tokens.

    ``x (B, N, C)`` → ``out (B, N, C)`` (before ``proj``) and ``score (B, N − S)`` =
    ``Σ_h Σ_i w_i · softmax_j(q_i·k_j·scale)[j] / (H·N)`` over columns ``j ≥ S``, with ``w_i = w_kf``
    for keyframe queries ``i < S`` and 1 otherwise (the released code's mean over queries and heads).

    On CPU both come from two fused flash-attention passes (:func:`_flash_importance`, ≈2.1× one
    attention instead of ≈4× for materialised probabilities); elsewhere from
    :func:`explicit_attention_importance`. Both are matmuls the FLOP counter sees."""
    B, N, C = x.shape
    q, k, v = attn.qkv_heads(x)  # 3 x (B, H, N, hd)
    if q.is_cpu:
        p = attn.attn_drop if attn.training else 0.0
        out, lse = _FLASH_CPU(q, k, v, p, scale=attn.scale)  # (B, H, N, hd), (B, H, N)
        score = _flash_importance(q.detach(), k.detach(), lse.detach(), num_key, keyframe_weight, attn.scale)
    else:
        out, score = explicit_attention_importance(q, k, v, num_key, keyframe_weight, attn.scale)
    return out.transpose(1, 2).reshape(B, N, C), score


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # returns (out, logsumexp)


@torch.no_grad()
def _flash_importance(q, k, lse, num_key: int, keyframe_weight: float, scale: float) -> torch.Tensor:
    """``Σ_h Σ_i w_i exp(s·q_i·k_j − lse_i) / (H·N)`` for the non-keyframe keys ``j``.

    The sum over queries is a log-sum-exp with the roles swapped: ``k_j`` queries the ``q_i`` with
    the additive bias ``log w_i − lse_i``. The bias rides in one extra channel
    (``[s·k_j, 1] · [q_i, bias_i]``; zero-padded to a multiple of 8), so a second flash pass
    returns ``log score`` per head without materialising ``(N, N)`` probabilities."""
    B, H, N, d = q.shape
    bias = -lse.float()  # (B, H, N)
    if keyframe_weight != 1.0:
        bias[..., :num_key] += math.log(keyframe_weight)
    pad = q.new_zeros(1, 1, 1, 1, dtype=torch.float32).expand(B, H, -1, -(d + 1) % 8)
    kj = k[:, :, num_key:].float()
    new_q = torch.cat([kj * scale, torch.ones_like(kj[..., :1]), pad.expand(-1, -1, N - num_key, -1)], -1)
    new_k = torch.cat([q.float(), bias[..., None], pad.expand(-1, -1, N, -1)], -1)  # (B, H, N, d')
    _, lse_t = _FLASH_CPU(new_q, new_k, new_k, scale=1.0)  # (B, H, N − S); the values are unused
    return lse_t.exp().sum(1) / (H * N)


def explicit_attention_importance(
    q, k, v, num_key: int, keyframe_weight: float, scale: float, chunk: int = 256
):
    """Reference form: softmax probabilities materialised ``chunk`` queries at a time.

    ``q, k, v (B, H, N, hd)`` → ``out (B, H, N, hd)``, ``score (B, N − S)``."""
    B, H, N, _ = q.shape
    kt = k.transpose(-2, -1) * scale  # (B, H, hd, N)
    outs, score = [], q.new_zeros(B, N - num_key)
    for s in range(0, N, chunk):
        p = (q[:, :, s : s + chunk] @ kt).softmax(-1)  # (B, H, c, N)
        outs.append(p @ v)  # (B, H, c, hd)
        col = p[..., num_key:].detach()  # (B, H, c, N − S)
        n_kf = min(max(num_key - s, 0), col.shape[2])  # keyframe queries in this chunk
        score += keyframe_weight * col[:, :, :n_kf].sum((1, 2)) + col[:, :, n_kf:].sum((1, 2))
    return torch.cat(outs, 2), score / (H * N)


class KTPBlock(Block):
    """A :class:`Block` that prunes non-keyframe tokens between its attention and its MLP."""

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
        if not 0 < keep_rate <= 1:
            raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
        self.keep_rate, self.keyframe_weight, self.sort_kept = keep_rate, keyframe_weight, sort_kept

    def num_kept(self, num_tokens: int, num_key: int) -> int:
        """Non-keyframe tokens kept out of ``num_tokens`` (keyframe included): ceil(rate·N) − S."""
        return max(math.ceil(self.keep_rate * num_tokens) - num_key, 0)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, num_key: int):
        _, N, C = x.shape
        out, score = attention_with_importance(self.attn, self.norm1(x), num_key, self.keyframe_weight)
        x = x + self.drop_path(self.attn.proj_drop(self.attn.proj(out)))
        n_keep = self.num_kept(N, num_key)
        if n_keep == N - num_key:  # nothing to drop (as the released code: order untouched)
            return x + self.drop_path(self.mlp(self.norm2(x))), idx
        keep = score.topk(n_keep, dim=1).indices  # (B, n_keep), by score
        if self.sort_kept:
            keep = keep.sort(1).values  # by position
        others = x[:, num_key:].gather(1, keep[..., None].expand(-1, -1, C))  # (B, n_keep, C)
        x = torch.cat([x[:, :num_key], others], 1)
        idx = idx.gather(1, keep)
        return x + self.drop_path(self.mlp(self.norm2(x))), idx


def keyframe_first(x: torch.Tensor, num_slices: int) -> tuple[torch.Tensor, int]:
    """Time-major tokens ``(B, t·S, C)`` → keyframe slice ``t // 2`` first, then the others in order.

    Returns the reordered tokens and the keyframe slot ``t // 2``."""
    B, N, C = x.shape
    key = num_slices // 2
    x = x.view(B, num_slices, N // num_slices, C)  # (B, t, S, C)
    return torch.cat([x[:, key], x[:, :key].flatten(1, 2), x[:, key + 1 :].flatten(1, 2)], 1), key


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
    """``depth`` blocks; block ``i`` is a :class:`KTPBlock` where ``keep_rates[i] < 1``."""
    dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # (python: works on the meta device)
    return nn.ModuleList(
        KTPBlock(dim, num_heads, r, keyframe_weight, sort_kept, drop_path=d, **kw)
        if r < 1
        else Block(dim, num_heads, drop_path=d, **kw)
        for r, d in zip(keep_rates, dpr)
    )
