"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021) and SIFA-Transformer (Long et al., "Stand-Alone Inter-Frame Attention in Video
Models", CVPR 2022), as released in ``FuchenUSTC/SIFA`` (``model/c2d_sifa_swin.py``).

:class:`SwinTransformer` is the 2D Swin (T/S/B: depths 2-2-6-2 / 2-2-18-2 / 2-2-18-2, widths 96/96/128,
window 7, patch 4) with the official/timm parameter names (``patch_embed.proj``, ``layers.{i}.blocks.
{j}.attn.qkv``, ``...attn.relative_position_bias_table``, ``layers.{i}.downsample.reduction``, ``norm``,
``head``), so official Swin ImageNet weights load. It takes a clip and runs on every time step:

* ``(B, 3, T, H, W)`` -> ``tubelet_size`` frames per step (1: per-frame, TSN-style) -> ``B*T'`` images;
  ``(B, 3, H, W)`` images are clips of one step. Logits ``(B, num_classes)`` are averaged over the
  ``T'`` steps; ``forward_features`` gives the pooled step features ``(B, T', D)``.
* Window attention (W-MSA/SW-MSA) runs through the shared :class:`~kinetix.layers.attention.Attention`:
  the relative position bias and the shifted-window mask form one additive float mask. Cyclic shift
  plus window partition is a single gather of the tokens (its inverse a single gather back).

SIFA-Transformer (``sifa=True``), as released: 4-frame tubelets (``Conv3d(3, D, (4, 4, 4))``, no patch
LayerNorm: the released ``TubeletEmbed`` replaces Swin's ``PatchEmbed`` and drops its norm), and in
every block, after the window-attention residual and before the MLP,

* non-shifted blocks (even index, and every block whose stage fits in one window, e.g. stage 4 at
  224): ``x = x + LayerNorm_tda(SIFA(x))`` — inter-frame attention with *fixed zero offsets* (plain 3x3
  neighbourhood of frame t+1, channel-mean dot-product weights, no softmax, last frame gets nothing),
  with the LayerNorm's weight and bias zero-initialised;
* shifted blocks: ``x = x + Conv2d(D, D, (1, 3))`` over the time axis (zero-initialised).

The paper's reading of the SIFA term is a constructor option (``sifa_offsets="learned"``: offsets
predicted from the motion-saliency map, so the block is deformable; ``sifa_last_frame="self"``: the
last frame attends to itself); the defaults are the released behaviour, which released weights need
(:class:`InterFrameResidual`).

Both additions are identities at initialisation, so a SIFA-Transformer initialised from an image Swin
(:func:`init_from_image_swin`, patch filter at temporal index 2 of 4) starts as that Swin run on every
tubelet (without the patch norm).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import CheckpointError
from kinetix.layers.attention import Attention
from kinetix.layers.drop import DropPath
from kinetix.layers.mlp import Mlp
from kinetix.layers.patch_embed import TubeletEmbed
from kinetix.layers.temporal import inter_frame_attention, motion_saliency
from kinetix.layers.weight_init import trunc_normal_init_
from kinetix.utils.state_dict import read_state_dict

from ._pretrained import PretrainedCfg
from ._registry import register_model

__all__ = [
    "InterFrameResidual",
    "SwinBlock",
    "SwinTransformer",
    "TemporalConv",
    "WindowAttention",
    "init_from_image_swin",
    "local_inter_frame_attention",
]

_MASK = -100.0  # the official Swin's value for tokens of different shifted regions


# ---- window layout ---------------------------------------------------------------------------------
def _outside_inference_mode(fn):
    """Cached index/mask tensors are built as normal tensors even when the first call happens under
    ``torch.inference_mode()`` (an inference tensor in the cache would break later training steps:
    "Inference tensors cannot be saved for backward")."""

    @functools.wraps(fn)
    def wrapper(*args):
        with torch.inference_mode(False):
            return fn(*args)

    return wrapper


@functools.lru_cache(maxsize=128)
@_outside_inference_mode
def window_layout(h: int, w: int, window: int, shift: int, device: torch.device):
    """Token order of (shifted) windows on an ``h x w`` grid, cached per shape.

    Returns ``(idx, inv, mask)``: ``tokens.index_select(1, idx)`` cyclically shifts the grid by
    ``-shift`` and lists its ``window x window`` windows one after the other (window-major, row-major
    inside); ``index_select(1, inv)`` undoes it. ``mask`` ``(nW, 1, N, N)`` is 0 between tokens of the
    same region of the shifted grid and -100 otherwise (official Swin), ``None`` without shift.
    """
    if h % window or w % window:
        raise ValueError(f"a {h}x{w} token grid cannot be split into {window}x{window} windows")
    nh, nw = h // window, w // window
    grid = torch.arange(h * w, device=device).view(h, w)
    rolled = torch.roll(grid, (-shift, -shift), (0, 1))  # rolled[i, j] = grid[i + shift, j + shift]
    idx = rolled.view(nh, window, nw, window).transpose(1, 2).reshape(-1)  # (nW*N,) window order
    inv = torch.empty_like(idx)
    inv[idx] = torch.arange(h * w, device=device)
    if shift == 0:
        return idx, inv, None
    rh, rw = torch.zeros(h, device=device), torch.zeros(w, device=device)  # region ids per row/column
    rh[h - window : h - shift], rh[h - shift :] = 1, 2
    rw[w - window : w - shift], rw[w - shift :] = 1, 2
    region = (3 * rh[:, None] + rw[None, :]).view(nh, window, nw, window).transpose(1, 2)
    region = region.reshape(nh * nw, window * window)  # (nW, N), shifted coordinates
    diff = region[:, None, :] != region[:, :, None]  # (nW, N, N)
    mask = torch.zeros(diff.shape, device=device).masked_fill_(diff, _MASK)
    return idx, inv, mask.unsqueeze(1)  # (nW, 1, N, N)


@functools.lru_cache(maxsize=32)
@_outside_inference_mode
def relative_position_index(window: int, device: torch.device) -> torch.Tensor:
    """``(N*N,)`` row of ``relative_position_bias_table`` for every token pair of a window (official
    Swin: ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``, pairs in row-major query, key order)."""
    r = torch.arange(window, device=device)
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (N,)
    dy, dx = ys[:, None] - ys[None, :] + window - 1, xs[:, None] - xs[None, :] + window - 1  # (N, N)
    return (dy * (2 * window - 1) + dx).flatten()


class WindowAttention(Attention):
    """Multi-head self-attention inside windows with a relative position bias (W-MSA / SW-MSA).

    ``(B, nW, N, C) -> (B, nW, N, C)`` with ``N = window**2``; ``mask`` ``(nW, 1, N, N)`` or ``None``.
    Adds ``relative_position_bias_table`` ``((2w-1)**2, heads)`` to :class:`Attention`'s ``qkv``/``proj``
    (the official ``relative_position_index`` buffer is a cached function here, not a state entry);
    the bias (and the shift mask) reach SDPA as one additive float mask. Windows and heads share the
    SDPA "heads" axis, ``(B, nW*heads, N, head_dim)``, so one ``(1, nW*heads, N, N)`` mask broadcasts
    over the batch and the fused CPU/GPU kernels apply.
    """

    def __init__(self, dim, num_heads, window_size, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window_size**2
        index = relative_position_index(self.window_size, self.relative_position_bias_table.device)
        bias = self.relative_position_bias_table[index]  # (N*N, heads)
        return bias.view(n, n, -1).permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, nW, N, C = x.shape
        bias = self.relative_position_bias()  # (heads, N, N)
        bias = bias if mask is None else bias + mask  # (nW or 1, heads, N, N)
        bias = bias.expand(nW, -1, -1, -1).reshape(1, nW * self.num_heads, N, N)
        qkv = self.qkv_packed(x).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, heads, N, hd)
        q, k, v = qkv.reshape(3, B, nW * self.num_heads, N, self.head_dim).unbind(0)
        x = self.sdpa(q, k, v, bias.to(q.dtype))  # (B, nW*heads, N, hd)
        x = x.view(B, nW, self.num_heads, N, self.head_dim).transpose(2, 3)  # (B, nW, N, heads, hd)
        if torch.compiler.is_exporting():  # torch.onnx decomposes SDPA into a differently laid out
            x = x.clone(memory_format=torch.contiguous_format)  # output: the reshape must not be a view
        x = x.reshape(B, nW, N, C)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}"


# ---- temporal layers of SIFA-Transformer ---------------------------------------------------------------
def local_inter_frame_attention(
    f: torch.Tensor, kernel_size: int = 3, last_frame: str = "none"
) -> torch.Tensor:
    """SIFA with zero offsets on channels-last features ``(B, T, H, W, C) -> (B, T, H, W, C)``.

    Frame t (query at p) aggregates the ``k x k`` neighbourhood of frame t+1 (keys = values, zero
    padding): ``sum_k w_k f_{t+1}(p + p_k)`` with ``w_k = mean_c f_t(p) f_{t+1}(p + p_k)`` (no softmax);
    the last frame gets zeros (``last_frame="none"``, released) or attends to its own neighbourhood
    (``"self"``, the paper). Equals :func:`kinetix.layers.temporal.inter_frame_attention` with a zero
    offset, without the ``k*k``-times larger sampled tensor (one pass per tap instead).
    """
    if last_frame not in ("none", "self"):
        raise ValueError(f"last_frame must be 'none' or 'self', got {last_frame!r}")
    B, T, H, W, C = f.shape
    pad = kernel_size // 2
    if last_frame == "self":  # queries: every frame; keys/values: frames 1..T-1, then T-1 again
        q, kv = f, torch.cat([f[:, 1:], f[:, -1:]], 1)
    else:  # queries: frames 0..T-2; keys/values: frames 1..T-1
        q, kv = f[:, :-1], f[:, 1:]
    kv = F.pad(kv, (0, 0, pad, pad, pad, pad))  # (B, Tq, H+2p, W+2p, C)
    out = f.new_zeros(B, T, H, W, C)
    agg = out[:, : q.shape[1]]  # view: with "none" the last frame stays zero
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            v = kv[:, :, dy : dy + H, dx : dx + W]
            agg += (q * v).mean(-1, keepdim=True) * v
    return out


class InterFrameResidual(nn.Module):
    """The released ``forward_rtc`` term ``tda_norm(SIFA(x))``, or the paper's SIFA block.

    ``x`` ``(B*T, H*W, C)`` (time steps of a clip consecutive), ``grid = (T, H, W)`` -> same shape.
    ``norm`` (``tda_norm`` in the released checkpoint) has weight and bias zero-initialised. The
    released code applies it to the masked aggregation, so the last frame receives the norm's bias.

    Two readings (DESIGN §5), chosen at construction:

    * ``offsets="zero"`` (released ``c2d_sifa_swin.py``: ``conv_offset`` commented out, the offset a
      zero tensor): a plain ``k x k`` neighbourhood of frame t+1 — not deformable.
      ``offsets="learned"`` (the paper's block): ``conv_offset`` (``Conv2d(C, 2k², 3)``, no bias,
      zero-initialised, as the released CNN block) predicts the offsets of frame t+1's taps from
      its motion saliency ``sigmoid(f_{t+1} - f_t) f_{t+1} + f_{t+1}``; bilinear sampling with zero
      padding (:func:`~kinetix.layers.temporal.inter_frame_attention`).
    * ``last_frame="none"`` (released: masked, the last frame gets no aggregation) or ``"self"``
      (the paper: the last frame attends to its own neighbourhood).

    With ``offsets="learned"`` the zero-initialised ``conv_offset`` makes the block start as the
    zero-offset one, so either reading starts from the same function.
    """

    def __init__(self, dim: int, kernel_size: int = 3, offsets: str = "zero", last_frame: str = "none"):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"SIFA needs an odd neighbourhood size, got {kernel_size}")
        if offsets not in ("zero", "learned"):
            raise ValueError(f"offsets must be 'zero' (released) or 'learned' (paper), got {offsets!r}")
        if last_frame not in ("none", "self"):
            raise ValueError(f"last_frame must be 'none' (released) or 'self' (paper), got {last_frame!r}")
        self.kernel_size, self.offsets, self.last_frame = kernel_size, offsets, last_frame
        self.norm = nn.LayerNorm(dim)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        self.conv_offset = None
        if offsets == "learned":
            self.conv_offset = nn.Conv2d(dim, 2 * kernel_size**2, 3, padding=1, bias=False)
            nn.init.zeros_(self.conv_offset.weight)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        t, h, w = grid
        C = x.shape[-1]
        f = x.view(-1, t, h, w, C)  # (B, T, H, W, C)
        if self.conv_offset is None:
            agg = local_inter_frame_attention(f, self.kernel_size, self.last_frame)
        else:
            fc = f.permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
            sal = motion_saliency(fc).transpose(1, 2).reshape(-1, C, h, w)  # (B*T, C, H, W)
            offset = self.conv_offset(sal).view(-1, t, 2 * self.kernel_size**2, h, w).transpose(1, 2)
            agg = inter_frame_attention(fc, offset, self.kernel_size, last_frame=self.last_frame)
            agg = agg.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
        return self.norm(agg.reshape_as(x))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, offsets={self.offsets}, last_frame={self.last_frame}"


class TemporalConv(nn.Module):
    """The released ``forward_vtc``: ``Conv2d(D, D, (1, 3), padding (0, 1), bias=False)`` over time.

    ``x`` ``(B*T, L, C)``, ``grid = (T, H, W)`` -> same shape. The weight keeps the released layout
    ``conv.weight`` ``(D, D, 1, 3)`` and is zero-initialised. Computed channels-last as one GEMM
    against the three stacked taps plus two shifted adds (no transposes of the feature map).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, (1, 3), padding=(0, 1), bias=False)
        nn.init.zeros_(self.conv.weight)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        t, C = grid[0], x.shape[-1]
        taps = self.conv.weight[:, :, 0].permute(2, 0, 1).reshape(3 * C, C)  # (tap * C_out, C_in)
        z = F.linear(x, taps).view(-1, t, x.shape[1], 3, C)  # (B, T, L, tap, C)
        out = z[:, :, :, 1].clone()  # tap 1 reads frame t
        out[:, 1:] += z[:, :-1, :, 0]  # tap 0 reads frame t-1
        out[:, :-1] += z[:, 1:, :, 2]  # tap 2 reads frame t+1
        return out.view_as(x)


# ---- Swin ------------------------------------------------------------------------------------------
class SwinBlock(nn.Module):
    """Swin block: ``x + W-MSA(norm1(x))`` [``+ temporal(x)``] ``+ MLP(norm2(x))``.

    ``x`` ``(B*T, H*W, C)``, ``grid = (T, H, W)``. ``temporal`` (SIFA-Transformer) is an
    :class:`InterFrameResidual` or :class:`TemporalConv`, or ``None`` for the image Swin.
    """

    def __init__(
        self, dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True,
        drop=0.0, attn_drop=0.0, drop_path=0.0, temporal: nn.Module | None = None,
    ):  # fmt: skip
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.temporal = temporal

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        BT, L, C = x.shape
        idx, inv, mask = window_layout(grid[1], grid[2], self.window_size, self.shift_size, x.device)
        y = self.norm1(x).index_select(1, idx).view(BT, -1, self.window_size**2, C)  # (B*T, nW, N, C)
        y = self.attn(y, mask).view(BT, L, C).index_select(1, inv)  # back to the (H, W) token order
        x = x + self.drop_path(y)
        if self.temporal is not None:
            x = x + self.temporal(x, grid)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}"


class PatchMerging(nn.Module):
    """``(B, H*W, C) -> (B, H/2*W/2, 2C)``: 2x2 neighbours concatenated in the official order
    ``[(0,0), (1,0), (0,1), (1,1)]`` (row offset fastest), ``norm`` (4C), ``reduction`` (no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, h // 2, 2, w // 2, 2, C).permute(0, 1, 3, 4, 2, 5)  # (B, h/2, w/2, dw, dh, C)
        return self.reduction(self.norm(x.reshape(B, h * w // 4, 4 * C)))


class SwinStage(nn.Module):
    """The official ``BasicLayer``: ``blocks`` then (except in the last stage) ``downsample``."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.window_size = blocks[0].window_size

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        for blk in self.blocks:
            x = blk(x, grid)
        h, w = grid[1:]
        if self.downsample is None:
            return x, (h, w)
        return self.downsample(x, h, w), (h // 2, w // 2)


class _SwinPatchEmbed(TubeletEmbed):
    """Patch (``tubelet_size=1``, Conv2d weight as the image Swin) or tubelet (Conv3d) embedding with
    time-major tokens, then the optional patch LayerNorm (``norm``)."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__(patch_size, tubelet_size, in_chans, embed_dim, layout="time_major")
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def _make_proj(self, in_chans: int, embed_dim: int, bias: bool) -> nn.Module:
        if self.tubelet_size == 1:
            return nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        return super()._make_proj(in_chans, embed_dim, bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x, grid = super().forward(x)  # (B, T'*H'*W', D)
        return self.norm(x), grid


class SwinTransformer(nn.Module):
    """2D Swin run on every time step of a clip (``tubelet_size`` frames per step); SIFA-Transformer
    with ``sifa=True``.

    Args:
        num_classes: classifier size (0: no classifier).
        num_frames: frames of the clips the model is configured for (informational; any multiple of
            ``tubelet_size`` works).
        img_size: input size the block structure is built for (official rule: a stage whose grid is
            not larger than the window uses one window of the grid's size and no shift). Other sizes
            work when every stage's grid is a multiple of its window (e.g. multiples of 224 for T/S/B).
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias: Swin.
        tubelet_size: frames per step (1: per-frame, 4: SIFA-Transformer's tubelets).
        patch_norm: LayerNorm after the patch embedding (image Swin: yes; released SIFA: no).
        sifa: add the SIFA / temporal-conv terms to every block (see the module docstring).
        sifa_kernel: SIFA neighbourhood (released: 3).
        sifa_offsets: ``"zero"`` (released: fixed zero offsets) or ``"learned"`` (paper: offsets from
            the motion-saliency map, zero-initialised ``conv_offset`` per SIFA block).
        sifa_last_frame: ``"none"`` (released: the last frame gets no SIFA term) or ``"self"``
            (paper: the last frame attends to itself).
        drop_rate, attn_drop_rate, drop_path_rate: dropouts in the blocks, linear stochastic depth.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        num_frames: int = 1,
        img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        tubelet_size: int = 1,
        patch_norm: bool = True,
        sifa: bool = False,
        sifa_kernel: int = 3,
        sifa_offsets: str = "zero",
        sifa_last_frame: str = "none",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        dropout: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        self.num_classes, self.num_frames, self.tubelet_size = num_classes, num_frames, tubelet_size
        self.patch_size, self.num_stages = patch_size, len(depths)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.patch_embed = _SwinPatchEmbed(patch_size, tubelet_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # stochastic depth decay rule
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim, res = embed_dim * 2**i, img_size // patch_size // 2**i
            ws, shift = (res, 0) if res <= window_size else (window_size, window_size // 2)
            blocks = []
            for j in range(depth):
                s = 0 if j % 2 == 0 else shift
                temporal = None
                if sifa:  # released: SIFA in non-shifted blocks, temporal conv in shifted ones
                    temporal = (
                        InterFrameResidual(dim, sifa_kernel, sifa_offsets, sifa_last_frame)
                        if s == 0
                        else TemporalConv(dim)
                    )
                blocks.append(
                    SwinBlock(dim, heads, ws, s, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                              dpr[sum(depths[:i]) + j], temporal)
                )  # fmt: skip
            down = PatchMerging(dim) if i < len(depths) - 1 else None
            self.layers.append(SwinStage(blocks, down))
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Official Swin init; the temporal terms are zeroed again (identities at init)."""
        trunc_normal_init_(self)
        for m in self.modules():
            if isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
            elif isinstance(m, InterFrameResidual):
                nn.init.zeros_(m.norm.weight)
                nn.init.zeros_(m.norm.bias)
                if m.conv_offset is not None:
                    nn.init.zeros_(m.conv_offset.weight)
            elif isinstance(m, TemporalConv):
                nn.init.zeros_(m.conv.weight)

    def _check_input(self, T: int, H: int, W: int) -> None:
        if T % self.tubelet_size:
            raise ValueError(
                f"{type(self).__name__} takes {self.tubelet_size}-frame tubelets: got {T} frames"
            )
        h, w = H // self.patch_size, W // self.patch_size
        for i, stage in enumerate(self.layers):
            ws = stage.window_size
            if h % ws or w % ws or (stage.downsample is not None and (h % 2 or w % 2)):
                size = self.input_multiple()
                raise ValueError(
                    f"input {H}x{W} gives a {h}x{w} token grid in stage {i + 1}, which does not split into "
                    f"{ws}x{ws} windows (and 2x2 merges); use a size that is a multiple of {size}"
                )
            h, w = h // 2, w // 2

    def input_multiple(self) -> int:
        """Input sizes that work are multiples of this (every stage's grid splits into its windows
        and 2x2 merges): 224 for Swin-T/S/B built at 224."""
        sizes = []
        for i, stage in enumerate(self.layers):
            sizes.append(self.patch_size * 2**i * stage.window_size)
            if stage.downsample is not None:
                sizes.append(self.patch_size * 2 ** (i + 1))
        return math.lcm(*sizes)

    # ---- model API -----------------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``(B, C, T, H, W)`` or ``(B, C, H, W)`` -> normed last-stage tokens ``(B*T', h*w, D)`` and
        ``(T', h, w)``."""
        if x.ndim == 4:
            x = x.unsqueeze(2)  # an image is a one-frame clip
        B, _, T, H, W = x.shape
        self._check_input(T, H, W)
        x, (t, h, w) = self.patch_embed(x)  # (B, T'*h*w, D), time-major
        x = self.pos_drop(x.view(B * t, h * w, -1))  # (B*T', h*w, D)
        for stage in self.layers:
            x, (h, w) = stage(x, (t, h, w))
        return self.norm(x), (t, h, w)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``-> (B, T', D)``: token-averaged features of every step."""
        tokens, (t, _, _) = self.forward_tokens(x)
        return self.pool(tokens, x.shape[0], t)

    def pool(self, tokens: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
        """Token average of every step: ``(B*T', h*w, D) -> (B, T', D)``."""
        return tokens.mean(1).view(batch, steps, -1)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, T', D) -> (B, num_classes)``: dropout, classifier, average over the steps."""
        x = self.head_drop(feats)
        return x.mean(1) if pre_logits else self.head(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        dev = next(self.parameters()).device
        self.head = (
            nn.Linear(self.num_features, num_classes, device=dev) if num_classes > 0 else nn.Identity()
        )
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Biases, norms and the relative position bias tables (official Swin optimiser policy)."""
        return {
            n for n, p in self.named_parameters() if p.ndim <= 1 or n.endswith("relative_position_bias_table")
        }


# ---- checkpoints -----------------------------------------------------------------------------------
_DROP = re.compile(r"\.(relative_position_index|attn_mask)$")  # buffers of the official Swin
_MERGE = re.compile(r"^layers\.(\d+)\.downsample\.")
_OTHER_TERM = {".temporal.norm.": ".temporal.conv.weight", ".temporal.conv.": ".temporal.norm.weight"}


def _convert(state_dict: Mapping[str, torch.Tensor], model: SwinTransformer) -> dict[str, torch.Tensor]:
    """Official Swin, timm Swin and released SIFA-Transformer names -> kinetix names (no checks of
    completeness). The image patch filter is placed at temporal index ``tubelet_size // 2`` of a
    tubelet model (released ``transfer_weights``: index 2 of 4, zeros elsewhere)."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("layers.3.downsample.") for k in sd):  # timm >= 0.9: merging opens stages 2-4
        sd = {_MERGE.sub(lambda m: f"layers.{int(m[1]) - 1}.downsample.", k): v for k, v in sd.items()}
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if _DROP.search(k):
            continue
        if k.endswith(".def_cor.weight"):  # DefCorFixW: the fixed 1/C correlation weights
            if not torch.allclose(v.float(), torch.full_like(v.float(), 1.0 / v.shape[0])):
                raise CheckpointError(
                    f"{k}: SIFA correlation weights must be the fixed 1/C, got other values"
                )
            continue
        k = re.sub(r"^(fc|head\.fc)\.", "head.", k)
        k = re.sub(r"\.tda_norm\.", ".temporal.norm.", k)
        k = re.sub(r"(blocks\.\d+)\.conv\.weight$", r"\1.temporal.conv.weight", k)
        if k not in own and _unused_term(k, own):
            continue  # released blocks carry both terms; only one of them is used per block
        if k == "patch_embed.proj.weight" and v.dim() == 4 and own[k].dim() == 5:
            v3 = v.new_zeros(*v.shape[:2], model.tubelet_size, *v.shape[2:])
            v3[:, :, model.tubelet_size // 2] = v
            v = v3
        out[k] = v
    return out


def _unused_term(key: str, own: Mapping[str, torch.Tensor]) -> bool:
    """``key`` is the SIFA/conv term of a block whose model counterpart runs the other term."""
    for term, other in _OTHER_TERM.items():
        if term in key:
            return key[: key.index(term)] + other in own
    return False


def _is_temporal(key: str) -> bool:
    return ".temporal." in key


def init_from_image_swin(
    model: SwinTransformer, state_dict_or_path: Mapping[str, torch.Tensor] | str | Path
) -> SwinTransformer:
    """Load 2D Swin ImageNet weights (official ``{'model': ...}`` or timm layouts) into a Swin or a
    SIFA-Transformer.

    The patch filter goes to the central frame of each tubelet (released: index 2 of 4); the
    classifier is loaded only when its shape fits; the image patch norm is dropped when the model has
    none (released SIFA-Transformer). Every other model key must come from the file, except the
    temporal layers, which keep their zero initialisation — anything else raises
    :class:`~kinetix.errors.CheckpointError` naming the keys.
    """

    src = str(state_dict_or_path) if isinstance(state_dict_or_path, str | Path) else "image Swin weights"
    sd = (
        read_state_dict(state_dict_or_path)
        if isinstance(state_dict_or_path, str | Path)
        else state_dict_or_path
    )
    sd = _convert(sd, model)
    own = model.state_dict()
    allowed_missing = {k for k in own if _is_temporal(k)}
    head = {k for k in own if k.startswith("head.")}
    if any(k in sd and sd[k].shape != own[k].shape for k in head):
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    allowed_missing |= head
    if "patch_embed.norm.weight" not in own:
        sd = {k: v for k, v in sd.items() if not k.startswith("patch_embed.norm.")}
    missing = sorted(k for k in own if k not in sd and k not in allowed_missing)
    unexpected = sorted(k for k in sd if k not in own)
    shapes = sorted(
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    )
    problems = {"missing (not temporal)": missing, "unexpected": unexpected, "shape mismatch": shapes}
    if any(problems.values()):
        parts = [
            f"{what}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
            for what, keys in problems.items()
            if keys
        ]
        raise CheckpointError(
            f"{src} does not fit {type(model).__name__} as image Swin weights ({'; '.join(parts)}). "
            "Pick the Swin size matching the file (T/S: embed_dim 96, B: 128) and window 7."
        )
    model.load_state_dict(sd, strict=False)
    return model


CHECKPOINT_FORMATS = (
    "kinetix weights, official or timm Swin ImageNet weights (2D; a SIFA-Transformer starts from them) "
    "or released SIFA-Transformer checkpoints (module.*, fc, tda_norm, def_cor)"
)


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: SwinTransformer
) -> dict[str, torch.Tensor]:
    """Released SIFA-Transformer checkpoints (``module.`` prefix, ``fc``, ``tda_norm``, ``conv`` in every
    block, fixed ``def_cor.weight``), official Swin (``head``, ``relative_position_index``, ``attn_mask``)
    and timm Swin (``head.fc``, merging at the start of stages 2-4) -> kinetix names.

    A 2D image Swin file given to a SIFA-Transformer initialises it with :func:`init_from_image_swin`.
    """
    sd = _convert(state_dict, model)
    own = model.state_dict()
    if any(_is_temporal(k) for k in own) and not any(_is_temporal(k) for k in sd):
        init_from_image_swin(model, sd)
        return model.state_dict()
    return sd


# ---- registered models ---------------------------------------------------------------------------
_SWIN_SRC = "https://github.com/microsoft/Swin-Transformer (ImageNet weights, MIT)"
_SIFA_SRC = "https://github.com/FuchenUSTC/SIFA (no weights released)"
_SIZES = {  # embed_dim, depths, num_heads, drop_path (Swin ImageNet / released SIFA settings)
    "t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    "s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
    "b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5),
}
_IN1K = {  # paper Table 1 (ImageNet-1K, 224)
    "t": {"imagenet_top1": 81.3, "params_m": 28.3, "gflops_224": 4.5},
    "s": {"imagenet_top1": 83.0, "params_m": 49.6, "gflops_224": 8.7},
    "b": {"imagenet_top1": 83.5, "params_m": 87.8, "gflops_224": 15.4},
}


def _swin_cfgs(size: str) -> dict[str, PretrainedCfg]:
    return {
        "k400": PretrainedCfg(num_frames=8, test_resize=256, source=_SWIN_SRC, licence="MIT"),
        "in1k": PretrainedCfg(
            num_frames=1,
            num_classes=1000,
            test_resize=256,
            source=_SWIN_SRC,
            licence="MIT",
            paper_metrics=_IN1K[size],
        ),
    }


def _sifa_cfgs(**metrics) -> dict[str, PretrainedCfg]:
    # README names the SIFA-Transformer setting "1x64x2": 64 consecutive frames, stride 2 (16 steps)
    return {
        "k400": PretrainedCfg(
            num_frames=64,
            sampling="dense",
            frame_interval=2,
            test_resize=224,
            source=_SIFA_SRC,
            paper_metrics=metrics,
        ),
    }


def _build(defaults: dict, kwargs: dict) -> SwinTransformer:
    if "input_size" in kwargs:
        kwargs["img_size"] = kwargs.pop("input_size")
    return SwinTransformer(**{**defaults, **kwargs})


def _swin(size: str, sifa: bool, kwargs: dict) -> SwinTransformer:
    dim, depths, heads, dpr = _SIZES[size]
    defaults = dict(
        embed_dim=dim, depths=depths, num_heads=heads, drop_path_rate=dpr, dropout=0.5, num_classes=400
    )
    if sifa:
        defaults.update(num_frames=64, tubelet_size=4, patch_norm=False, sifa=True)
    else:
        defaults.update(num_frames=8)
    return _build(defaults, kwargs)


@register_model(cfgs=_swin_cfgs("t"))
def swin_t(**kwargs) -> SwinTransformer:
    """Swin-T per frame (TSN-style logit average); ``num_frames=1`` / image input: the 2D Swin-T."""
    return _swin("t", False, kwargs)


@register_model(cfgs=_swin_cfgs("s"))
def swin_s(**kwargs) -> SwinTransformer:
    """Swin-S per frame (TSN-style logit average); ``num_frames=1`` / image input: the 2D Swin-S."""
    return _swin("s", False, kwargs)


@register_model(cfgs=_swin_cfgs("b"))
def swin_b(**kwargs) -> SwinTransformer:
    """Swin-B per frame (TSN-style logit average); ``num_frames=1`` / image input: the 2D Swin-B."""
    return _swin("b", False, kwargs)


@register_model(cfgs=_sifa_cfgs())
def sifa_swin_t(**kwargs) -> SwinTransformer:
    """SIFA-Transformer on Swin-T (not released; same recipe as S/B)."""
    return _swin("t", True, kwargs)


@register_model(cfgs=_sifa_cfgs())
def sifa_swin_s(**kwargs) -> SwinTransformer:
    """SIFA-Transformer on Swin-S (released ``c2d_sifa_swin_vit_s_p4_w7``)."""
    return _swin("s", True, kwargs)


@register_model(cfgs=_sifa_cfgs(top1=83.1))
def sifa_swin_b(**kwargs) -> SwinTransformer:
    """SIFA-Transformer on Swin-B (released ``c2d_sifa_swin_vit_b_p4_w7``; paper: 83.1% K400 top-1).
    ``sifa_offsets="learned", sifa_last_frame="self"`` builds the paper's deformable block."""
    return _swin("b", True, kwargs)


_TINY = dict(
    num_classes=5, img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4
)


@register_model(cfgs={"": PretrainedCfg(num_frames=4, input_size=64, num_classes=5, test_resize=64)})
def test_swin(**kwargs) -> SwinTransformer:
    """Tiny per-frame Swin for CI (dim 16, window 4, 64x64 frames)."""
    return _build({**_TINY, "num_frames": 4}, kwargs)


@register_model(cfgs={"": PretrainedCfg(num_frames=8, input_size=64, num_classes=5, test_resize=64)})
def test_sifa_swin(**kwargs) -> SwinTransformer:
    """Tiny SIFA-Transformer for CI (dim 16, window 4, 64x64, 4-frame tubelets)."""
    return _build({**_TINY, "num_frames": 8, "tubelet_size": 4, "patch_norm": False, "sifa": True}, kwargs)
