"""The one multi-head self-attention of kinetix (Vaswani et al., "Attention Is All You Need", 2017).

Every video-transformer variant (joint, divided, axial, local-global, factorised) is a token layout
or a mask around this module (see ``spacetime.py``); all of them run ``F.scaled_dot_product_attention``
(fused kernels on CPU and GPU, never an explicit ``N x N`` probability matrix).

Keys follow timm / the official TimeSformer and VideoMAE code: one fused ``qkv`` Linear (dim -> 3*dim)
and ``proj``. ``qv_bias_only=True`` is the VideoMAE/BEiT form: ``qkv`` has no bias and separate
``q_bias``/``v_bias`` parameters are used (the key bias is fixed at zero).

Shapes: ``forward``: ``(B, N, C) -> (B, N, C)``; ``qkv_heads``: ``(B, N, C) -> 3 x (B, heads, N, C/heads)``.

Attention probabilities for explanations (``kinetix.explain``): inside :func:`record_attention`, every
``Attention`` of a model computes ``softmax(q k^T * scale + mask)`` explicitly, appends it (averaged
over heads unless asked otherwise) to a call log and multiplies it with ``v``; outside, ``sdpa`` runs
``F.scaled_dot_product_attention`` unchanged (the only extra work is one ``is None`` check).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.utils.inference import FastLinear, onednn_sdpa, onednn_sdpa_applies


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qv_bias_only: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias and not qv_bias_only)
        if qkv_bias and qv_bias_only:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.probs_log: AttentionLog | None = None  # set by record_attention only
        self.onednn = False  # set by kinetix.utils.inference.onednn_copy (inference-time copies)

    def qkv_packed(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., 3, heads, head_dim)`` (a view of one GEMM's output)."""
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:  # VideoMAE: k has no bias
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
            if isinstance(self.qkv, FastLinear):  # kinetix.deploy.optimize_for_inference
                qkv = self.qkv.with_bias(x, bias)
            else:
                qkv = F.linear(x, self.qkv.weight, bias)
        return qkv.unflatten(-1, (3, self.num_heads, self.head_dim))

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, N, C) -> q, k, v`` each ``(B, heads, N, head_dim)`` (unscaled q)."""
        return self.qkv_packed(x).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, hd)

    def sdpa(self, q, k, v, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled dot-product attention on ``(..., heads, L, head_dim)`` tensors."""
        if self.probs_log is not None:
            return self._explicit(q, k, v, attn_mask)
        if self.onednn and attn_mask is None and not self.training and onednn_sdpa_applies(q, k):
            return onednn_sdpa(q, k, v, self.scale)
        p = self.attn_drop if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=self.scale)

    def _explicit(self, q, k, v, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``sdpa`` with the probabilities materialised and logged: ``(..., heads, L, S)``."""
        s = (q @ k.transpose(-2, -1)) * self.scale  # (..., heads, L, S)
        if attn_mask is not None:
            s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
        probs = s.softmax(-1)
        self.probs_log.add(self, probs)
        p = self.attn_drop if self.training else 0.0
        return F.dropout(probs, p) @ v if p else probs @ v  # (..., heads, L, head_dim)

    def attend(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Multi-head attention before the output projection: ``(B, N, C) -> (B, N, C)``."""
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x)  # strided views: SDPA reads them in place
        x = self.sdpa(q, k, v, attn_mask)  # (B, H, N, hd), stored as (B, N, H, hd)
        return x.transpose(1, 2).reshape(B, N, C)  # free for SDPA's (B, N, H, hd) storage

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj_drop(self.proj(self.attend(x, attn_mask)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


class AttentionLog:
    """The attention probabilities of every :class:`Attention` call inside :func:`record_attention`.

    ``calls``: ``[(module_name, probs), ...]`` in call order; ``probs`` is ``(..., L, S)`` averaged
    over heads (``mean_heads=True``, head axis removed) or ``(..., heads, L, S)``; a module called
    twice in one forward (e.g. ViViT Model 4's time and space heads) appears twice."""

    def __init__(self, names: dict[int, str], mean_heads: bool = True, detach: bool = True):
        self.calls: list[tuple[str, torch.Tensor]] = []
        self._names, self.mean_heads, self.detach = names, mean_heads, detach

    def add(self, module: Attention, probs: torch.Tensor) -> None:
        p = probs.detach() if self.detach else probs
        self.calls.append((self._names[id(module)], p.mean(-3) if self.mean_heads else p))

    def of(self, name: str) -> list[torch.Tensor]:
        """The probabilities logged by the module called ``name``, in call order."""
        return [p for n, p in self.calls if n == name]


@contextmanager
def record_attention(
    model: nn.Module, mean_heads: bool = True, detach: bool = True
) -> Iterator[AttentionLog]:
    """Within the block, every :class:`Attention` in ``model`` computes its probabilities explicitly
    and logs them (:class:`AttentionLog`); the outputs equal the SDPA path's up to rounding. Restores
    the SDPA path on exit, also after an error."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, Attention)}
    log = AttentionLog({id(m): n for n, m in mods.items()}, mean_heads, detach)
    for m in mods.values():
        m.probs_log = log
    try:
        yield log
    finally:
        for m in mods.values():
            m.probs_log = None
