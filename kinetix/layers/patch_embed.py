"""Patch and tubelet embeddings for video transformers.

* ``PatchEmbed``: a 2D ``p x p`` patch embedding applied to every frame (ViT, Dosovitskiy et al.
  2021; TimeSformer; ViViT "uniform frame sampling"). Weight ``proj.weight`` ``(D, C, p, p)``.
* ``TubeletEmbed``: a 3D ``t x p x p`` tubelet embedding (ViViT, Arnab et al. 2021; VideoMAE).
  Weight ``proj.weight`` ``(D, C, t, p, p)`` (Conv3d layout).

Both take ``(B, C, T, H, W)`` and return ``(tokens (B, N, D), grid (T', H', W'))`` with the tokens
already in the requested order: ``"time_major"`` (index = (t*H' + h)*W' + w, ViViT/VideoMAE) or
``"space_major"`` (index = (h*W' + w)*T' + t, official TimeSformer). A strided convolution with
kernel == stride is a GEMM over non-overlapping patches, so the forward is one reshape/permute of the
input (which also produces the requested token order) and one ``F.linear``. Trailing pixels that do
not fill a patch are dropped, as the strided convolution would.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.utils.inference import FastLinear

_LAYOUTS = ("time_major", "space_major")


class TubeletEmbed(nn.Module):
    def __init__(
        self,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        layout: str = "time_major",
        bias: bool = True,
    ):
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        self.patch_size, self.tubelet_size, self.embed_dim = patch_size, tubelet_size, embed_dim
        self.proj = self._make_proj(in_chans, embed_dim, bias)
        self.onednn = False  # set by kinetix.utils.inference.onednn_copy: the GEMM as a FastLinear
        # token axes after the input permute: (B, T', H', W', C, t, p, p) or (B, H', W', T', C, t, p, p)
        self._perm = (0, 2, 4, 6, 1, 3, 5, 7) if layout == "time_major" else (0, 4, 6, 2, 1, 3, 5, 7)

    def _make_proj(self, in_chans: int, embed_dim: int, bias: bool) -> nn.Module:
        t, p = self.tubelet_size, self.patch_size
        return nn.Conv3d(in_chans, embed_dim, (t, p, p), (t, p, p), bias=bias)

    def grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return num_frames // self.tubelet_size, height // self.patch_size, width // self.patch_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        B, C, T, H, W = x.shape
        t, p = self.tubelet_size, self.patch_size
        gt, gh, gw = self.grid(T, H, W)
        if gt == 0 or gh == 0 or gw == 0:
            raise ValueError(f"input (T, H, W)=({T}, {H}, {W}) is smaller than one {t}x{p}x{p} patch")
        x = x[:, :, : gt * t, : gh * p, : gw * p]
        x = x.reshape(B, C, gt, t, gh, p, gw, p).permute(self._perm)  # (B, tokens..., C, t, p, p)
        x = x.reshape(B, gt * gh * gw, C * t * p * p)  # one copy of the input
        w = self.proj.weight.reshape(self.embed_dim, -1)  # (D, C*t*p*p), a view
        fast = self.onednn and not torch.is_grad_enabled()  # inference only (the view is cached)
        x = self._fast_proj(w)(x) if fast else F.linear(x, w, self.proj.bias)  # (B, N, D)
        return x, (gt, gh, gw)

    def _fast_proj(self, w: torch.Tensor) -> FastLinear:
        """The projection as a :class:`FastLinear` on the same storage (kept outside the module tree,
        so the state dict is unchanged; repacked when the weight changes)."""
        fast = self.__dict__.get("_fast")
        if fast is None or fast.weight.data_ptr() != w.data_ptr():
            fast = self.__dict__["_fast"] = FastLinear.from_tensors(w, self.proj.bias)
        return fast


class PatchEmbed(TubeletEmbed):
    """Per-frame 2D patch embedding: ``TubeletEmbed`` with ``tubelet_size=1`` and a Conv2d weight."""

    def __init__(
        self,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        layout: str = "space_major",
        bias: bool = True,
    ):
        super().__init__(patch_size, 1, in_chans, embed_dim, layout, bias)

    def _make_proj(self, in_chans: int, embed_dim: int, bias: bool) -> nn.Module:
        return nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
