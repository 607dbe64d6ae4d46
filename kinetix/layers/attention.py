"""The one multi-head self-attention of kinetix (Vaswani et al., "Attention Is All You Need", 2017).

Every video-transformer variant (joint, divided, axial, local-global, factorised) is a token layout
or a mask around this module (see ``spacetime.py``); all of them run ``F.scaled_dot_product_attention``
(fused kernels on CPU and GPU, never an explicit ``N x N`` probability matrix).

Keys follow timm / the official TimeSformer and VideoMAE code: one fused ``qkv`` Linear (dim -> 3*dim)
and ``proj``. ``qv_bias_only=True`` is the VideoMAE/BEiT form: ``qkv`` has no bias and separate
``q_bias``/``v_bias`` parameters are used (the key bias is fixed at zero).

Shapes: ``forward``: ``(B, N, C) -> (B, N, C)``; ``qkv_heads``: ``(B, N, C) -> 3 x (B, heads, N, C/heads)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.utils.inference import FastLinear


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
        p = self.attn_drop if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=self.scale)

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
