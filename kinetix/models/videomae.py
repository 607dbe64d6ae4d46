"""VideoMAE ViT encoder and classifier (Tong, Song, Wang, Wang; "VideoMAE: Masked Autoencoders are
Data-Efficient Learners for Self-Supervised Video Pre-Training", NeurIPS 2022). Also EVAD's backbone.

A plain ViT over 2x16x16 tubelets (t-major tokens, no CLS) with a fixed sinusoid positional table
(not a parameter; resized per time slice (bicubic) and over time (linear) when the clip differs from
the pre-training grid, as EVAD does), attention with separate ``q_bias``/``v_bias`` (no key bias),
mean pooling + ``fc_norm`` before the head (or a final ``norm`` and the first token when
``use_mean_pooling=False``, as the official code).

Input ``(B, 3, T, H, W)`` -> logits ``(B, num_classes)``. For detection backbones,
``forward_tokens(x)`` returns the tokens before the final norm ``(B, t*h*w, D)`` and the grid
``(t, h, w)``; ``pos_embed_for(grid)`` gives the positional table; ``blocks`` is a plain ModuleList of
:class:`~kinetix.layers.spacetime.SpaceTimeBlock` (joint attention, ``block(x)``).

``keep_rate < 1`` switches on EVAD's keyframe-centric token pruning (``kinetix/layers/token_pruning.py``):
tokens are put keyframe slice (``t // 2``) first, and the blocks at ``prune_layers`` (default
:func:`~kinetix.layers.token_pruning.default_prune_layers`: 4th, 7th, 10th of 12) keep the keyframe
and the ``ceil(keep_rate·N) − h·w`` tokens that receive the most attention (keyframe queries weighted
``keyframe_weight``); mean pooling then averages the kept tokens. ``forward_tokens`` returns the kept
tokens ``(B, n, D)``, keyframe first. Same parameters (and checkpoints) at every keep rate.
"""

from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn as nn

from kinetix.layers.patch_embed import TubeletEmbed
from kinetix.layers.pos_embed import sinusoid_table_3d
from kinetix.layers.spacetime import SpaceTimeBlock
from kinetix.layers.token_pruning import KTPSpaceTimeBlock, keyframe_first, resolve_prune_layers
from kinetix.utils.state_dict import strip_prefix

from ._pretrained import KINETICS_MEAN, KINETICS_STD, PretrainedCfg
from ._registry import register_model
from ._vit_init import hf_vit_keys, init_vit_weights


class VideoMAE(nn.Module):
    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 16,
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_mean_pooling: bool = True,
        head_drop_rate: float = 0.0,
        head_init_scale: float = 0.001,
        keep_rate: float = 1.0,
        keyframe_weight: float = 4.0,
        prune_layers: tuple[int, ...] | None = None,
    ):
        super().__init__()
        prune = resolve_prune_layers(depth, keep_rate, prune_layers)
        if prune and not use_mean_pooling:
            raise ValueError("keep_rate < 1 needs use_mean_pooling=True (the first token may be pruned)")
        self.keep_rate, self._keyframe_first = keep_rate, bool(prune)
        self.num_classes, self.embed_dim, self.num_prefix_tokens = num_classes, embed_dim, 0
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.patch_embed = TubeletEmbed(patch_size, tubelet_size, in_chans, embed_dim, layout="time_major")
        self.register_buffer("pos_embed", sinusoid_table_3d(self.grid, None, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        ktp = partial(KTPSpaceTimeBlock, keep_rate=keep_rate, keyframe_weight=keyframe_weight)
        self.blocks = nn.ModuleList(
            (ktp if i in prune else SpaceTimeBlock)(
                embed_dim,
                num_heads,
                "joint",
                mlp_ratio,
                qkv_bias,
                qv_bias_only=True,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                layout="time_major",
                num_prefix_tokens=0,
            )
            for i in range(depth)
        )
        self.norm = nn.Identity() if use_mean_pooling else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if use_mean_pooling else None
        self.head_drop = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._pool = self._mean_pool if use_mean_pooling else self._first_token
        init_vit_weights(self)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The ``(1, t*h*w, D)`` sinusoid table for a token grid (the buffer at the built grid)."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        table = sinusoid_table_3d(tuple(grid), self.grid, self.embed_dim, device=self.pos_embed.device)
        return table.to(self.pos_embed.dtype)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``(B, 3, T, H, W)`` -> tokens before the final norm ``(B, t*h*w, D)`` and ``(t, h, w)``
        (with pruning: the kept tokens ``(B, n, D)``, keyframe slice first)."""
        x, grid = self.patch_embed(x)
        x = self.pos_drop(x + self.pos_embed_for(grid))
        if self._keyframe_first:  # joint attention and mean pooling do not depend on the order
            x = keyframe_first(x, grid[0])[0]
        for blk in self.blocks:
            x = blk(x, grid)
        return x, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.forward_tokens(x)[0])

    def _mean_pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(x.mean(1))

    def _first_token(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self._pool(x)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


# ---- checkpoints ----------------------------------------------------------------------------------
_HF_BLOCK = (  # VideoMAE's separate q/v biases, before the shared HF ViT table
    ("attention.attention.q_bias", "attn.q_bias"),
    ("attention.attention.v_bias", "attn.v_bias"),
    ("attention.attention.query.bias", "attn.q_bias"),
    ("attention.attention.value.bias", "attn.v_bias"),
)
_HF_TOP = {
    "videomae.embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "videomae.layernorm.": "norm.",
    "fc_norm.": "fc_norm.",
    "classifier.": "head.",
}
# pre-training checkpoints: the decoder, its projection and the mask token are not part of the encoder
_PRETRAIN_ONLY = re.compile(r"^(decoder|encoder_to_decoder|mask_token|decoder_pos_embed)")


def _from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return hf_vit_keys(sd, r"videomae\.encoder\.layer\.(\d+)\.(.*)", _HF_TOP, _HF_BLOCK)


CHECKPOINT_FORMATS = (
    "kinetix weights, official VideoMAE (fine-tuned, or the encoder.* of a pre-training checkpoint) or "
    "Hugging Face VideoMAE* weights"
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VideoMAE) -> dict[str, torch.Tensor]:
    """Official VideoMAE (fine-tuned, or the ``encoder.`` part of a pre-training checkpoint) or Hugging
    Face ``VideoMAE*`` weights -> kinetix names. The fixed sinusoid table is never loaded."""
    sd = strip_prefix(state_dict, "module.", "backbone.", "encoder.")
    if any(k.startswith("videomae.") for k in sd):
        sd = _from_hf(sd)
    fixed = ("pos_embed", "videomae.embeddings.position_embeddings")  # the sinusoid table, if saved
    return {k: v for k, v in sd.items() if not _PRETRAIN_ONLY.match(k) and k not in fixed}


# ---- registered models ---------------------------------------------------------------------------
_SRC = "https://github.com/MCG-NJU/VideoMAE"


def _cfg(**kw) -> PretrainedCfg:
    kw = {"test_views": (5, 3), "sampling": "dense", "frame_interval": 4, **kw}
    return PretrainedCfg(
        num_frames=16, input_size=224, mean=KINETICS_MEAN, std=KINETICS_STD, source=_SRC,
        licence="CC-BY-NC-4.0", **kw,
    )  # fmt: skip


def _create(kwargs, **defaults) -> VideoMAE:
    if "input_size" in kwargs:
        kwargs["img_size"] = kwargs.pop("input_size")
    return VideoMAE(**{**defaults, **kwargs})


@register_model(
    cfgs={
        "k400": _cfg(paper_metrics={"top1": 81.5}),
        "k400_hf": _cfg(hf_hub_id="MCG-NJU/videomae-base-finetuned-kinetics", file="model.safetensors"),
        "ssv2": _cfg(num_classes=174, sampling="segment", frame_interval=1, test_views=(2, 3)),
    }
)
def videomae_base(**kwargs) -> VideoMAE:
    """VideoMAE ViT-B/16, 16 x 224 (tubelet 2)."""
    return _create(kwargs)


@register_model(cfgs={"k400": _cfg(paper_metrics={"top1": 85.2})})
def videomae_large(**kwargs) -> VideoMAE:
    """VideoMAE ViT-L/16, 16 x 224."""
    return _create(kwargs, embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.2)


@register_model(
    cfgs={"": PretrainedCfg(num_frames=4, input_size=32, num_classes=5, mean=KINETICS_MEAN, std=KINETICS_STD)}
)
def test_videomae(**kwargs) -> VideoMAE:
    """Tiny VideoMAE for CI (dim 32, 2 blocks, 2x8x8 tubelets on 4x32x32 clips)."""
    return _create(kwargs, num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
