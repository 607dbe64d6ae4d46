"""TimeSformer (Bertasius, Wang, Torresani, "Is Space-Time Attention All You Need for Video
Understanding?", ICML 2021).

A ViT-B/16 over the per-frame patches of a clip with one of the paper's attention schemes
(``attention=``): ``"divided"`` (time then space, the released models), ``"joint"``, ``"space"``
(space-only: frames are independent images and the tokens are averaged over frames at the end),
``"local_global"`` (sparse L+G) and ``"axial"`` (T, W, H), the last two built from the paper's text.

Semantics follow the official code: per-frame ``Conv2d`` patches, learned ``pos_embed`` per frame
(CLS included) and ``time_embed`` (zeros at init; not in space-only), space-major token order
``1 + (h*W + w)*T + t``, one CLS token that takes part in spatial attention only (repeated per frame,
its residual averaged back), zero-initialised ``temporal_fc``. Embeddings are resized (nearest, as
the official code) when the clip has another number of frames or resolution.

``keep_rate < 1`` (joint attention only) switches on EVAD's keyframe-centric token pruning
(``kinetix/layers/token_pruning.py``): tokens are put CLS, keyframe ``T // 2``, other frames; the
blocks at ``prune_layers`` (default :func:`~kinetix.layers.token_pruning.default_prune_layers`: 4th,
7th, 10th of 12) keep the CLS and keyframe tokens (the CLS counts as a keyframe token: always kept,
its query row weighted ``keyframe_weight``) and the ``ceil(keep_rate·N) − 1 − h·w`` others that
receive the most attention; the head reads the CLS token as without pruning.

Input ``(B, 3, T, H, W)`` -> logits ``(B, num_classes)``; ``forward_features`` -> normed tokens
``(B, 1 + N, D)`` (space-only: ``1 + H*W`` tokens averaged over frames; pruning: the kept tokens,
CLS then keyframe first).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from kinetix.errors import CheckpointError
from kinetix.layers.patch_embed import PatchEmbed
from kinetix.layers.pos_embed import resize_pos_embed, resize_time_embed
from kinetix.layers.spacetime import SpaceTimeBlock
from kinetix.layers.token_pruning import KTPSpaceTimeBlock, keyframe_first, resolve_prune_layers
from kinetix.utils.state_dict import strip_prefix

from ._pretrained import KINETICS_MEAN, KINETICS_STD, PretrainedCfg
from ._registry import register_model
from ._vit_init import hf_vit_keys, init_vit_weights

ATTENTIONS = ("divided", "joint", "space", "local_global", "axial")


class TimeSformer(nn.Module):
    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 8,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        attention: str = "divided",
        keep_rate: float = 1.0,
        keyframe_weight: float = 4.0,
        prune_layers: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        prune = resolve_prune_layers(depth, keep_rate, prune_layers)
        if prune and attention != "joint":
            raise ValueError(f"token pruning (keep_rate < 1) needs attention='joint', got {attention!r}")
        self.keep_rate, self._keyframe_first = keep_rate, bool(prune)
        self.attention, self.num_classes, self.embed_dim = attention, num_classes, embed_dim
        self.num_prefix_tokens = 1
        space_only = attention == "space"
        self.grid = (num_frames, img_size // patch_size, img_size // patch_size)
        # space-only folds frames into the batch (time-major tokens); the others use space-major
        layout = "time_major" if space_only else "space_major"
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, layout=layout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[1] * self.grid[2], embed_dim))
        self.time_embed = None if space_only else nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear rule
        block_attention = "joint" if space_only else attention  # per-frame batches: joint == spatial
        ktp = partial(KTPSpaceTimeBlock, keep_rate=keep_rate, keyframe_weight=keyframe_weight)
        self.blocks = nn.ModuleList(
            (ktp if i in prune else SpaceTimeBlock)(
                embed_dim,
                num_heads,
                block_attention,
                mlp_ratio,
                qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                layout=layout,
                num_prefix_tokens=1,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._embed = self._embed_frames if space_only else self._embed_clip
        self._pool = self._mean_over_frames if space_only else self._no_pool
        init_vit_weights(self)

    # ---- embedding ------------------------------------------------------------------------------
    def _pos(self, h: int, w: int) -> torch.Tensor:
        return resize_pos_embed(self.pos_embed, self.grid[1:], (h, w), 1, mode="nearest")  # (1, 1+hw, D)

    def _embed_clip(self, x: torch.Tensor):
        B = x.shape[0]
        x, (T, h, w) = self.patch_embed(x)  # (B, h*w*T, D), space-major
        pos = self._pos(h, w)
        te = resize_time_embed(self.time_embed, T)  # (1, T, D)
        x = x.view(B, h * w, T, -1) + pos[:, 1:, None] + te[:, None]  # (B, hw, T, D)
        cls = (self.cls_token + pos[:, :1]).expand(B, -1, -1)  # frame 0's CLS: no time embedding
        return self.pos_drop(torch.cat([cls, x.flatten(1, 2)], 1)), (T, h, w)  # (B, 1 + hw*T, D)

    def _embed_frames(self, x: torch.Tensor):
        B = x.shape[0]
        x, (T, h, w) = self.patch_embed(x)  # (B, T*h*w, D), time-major
        pos = self._pos(h, w)
        x = x.view(B * T, h * w, -1) + pos[:, 1:]  # (B*T, hw, D): frames are independent images
        cls = (self.cls_token + pos[:, :1]).expand(B * T, -1, -1)
        return self.pos_drop(torch.cat([cls, x], 1)), (1, h, w)  # (B*T, 1 + hw, D)

    def _no_pool(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        return x

    def _mean_over_frames(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        return x.view(batch_size, -1, *x.shape[1:]).mean(1)  # (B*T, 1+hw, D) -> (B, 1+hw, D)

    # ---- model API -------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x, grid = self._embed(x)
        if self._keyframe_first:  # joint attention and the CLS do not depend on the token order
            x = keyframe_first(x, grid[0], 1, space_major=True)[0]
        for blk in self.blocks:
            x = blk(x, grid)
        return self.norm(self._pool(x, B))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}


# ---- checkpoints ----------------------------------------------------------------------------------
_HF_TOP = {
    "timesformer.embeddings.cls_token": "cls_token",
    "timesformer.embeddings.position_embeddings": "pos_embed",
    "timesformer.embeddings.time_embeddings": "time_embed",
    "timesformer.embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "timesformer.layernorm.": "norm.",
    "classifier.": "head.",
}
_HF_BLOCK = (  # TimeSformer's own block keys, before the shared HF ViT table
    ("temporal_attention.attention.qkv.", "temporal_attn.qkv."),
    ("temporal_attention.output.dense.", "temporal_attn.proj."),
    ("attention.attention.qkv.", "attn.qkv."),
    ("temporal_layernorm.", "temporal_norm1."),
    ("temporal_dense.", "temporal_fc."),
)


CHECKPOINT_FORMATS = (
    "kinetix weights, official TimeSformer .pyth (model.*) or Hugging Face Timesformer* weights"
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: TimeSformer) -> dict[str, torch.Tensor]:
    """Official ``.pyth`` (``model.`` prefix, ``model_state``) or Hugging Face ``Timesformer*`` weights
    -> kinetix names; ``pos_embed`` and ``time_embed`` are resized (nearest) to the model's grid."""
    sd = strip_prefix(state_dict, "module.", "model.")
    if any(k.startswith("timesformer.") for k in sd):
        sd = hf_vit_keys(sd, r"timesformer\.encoder\.layer\.(\d+)\.(.*)", _HF_TOP, _HF_BLOCK)
    own = model.state_dict()
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        n = sd["pos_embed"].shape[1] - 1
        side = round(n**0.5)
        if side * side != n:
            raise CheckpointError(
                f"pos_embed {tuple(sd['pos_embed'].shape)}: {n} patch positions are no square grid (a "
                "TimeSformer holds the CLS token and one position per patch of one frame)"
            )
        sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], (side, side), model.grid[1:], 1, mode="nearest")
    if "time_embed" in sd:
        if "time_embed" not in own:  # divided/joint checkpoint into a space-only model
            sd.pop("time_embed")
        elif sd["time_embed"].shape != own["time_embed"].shape:
            sd["time_embed"] = resize_time_embed(sd["time_embed"], model.grid[0])
    return sd


# ---- registered models ---------------------------------------------------------------------------
_SRC = "https://github.com/facebookresearch/TimeSformer"
_LIC = "CC-BY-NC-4.0 (official weights)"


def _cfg(num_frames=8, input_size=224, frame_interval=32, **kw) -> PretrainedCfg:
    kw.setdefault("test_views", (1, 3))
    return PretrainedCfg(
        num_frames=num_frames, input_size=input_size, mean=KINETICS_MEAN, std=KINETICS_STD,
        sampling="dense", frame_interval=frame_interval, source=_SRC, licence=_LIC, **kw,
    )  # fmt: skip


def _ssv2(num_frames=8, input_size=224) -> PretrainedCfg:
    # SSv2 configs: uniform segments, BGR input (REVERSE_INPUT_CHANNEL), 174 classes
    return _cfg(num_frames, input_size, 1, num_classes=174, channel_order="BGR").replace(sampling="segment")


def _create(kwargs, **defaults) -> TimeSformer:
    if "input_size" in kwargs:
        kwargs["img_size"] = kwargs.pop("input_size")
    return TimeSformer(**{**defaults, **kwargs})


@register_model(
    cfgs={
        "k400": _cfg(paper_metrics={"top1": 78.0, "top1_readme": 77.9, "gflops_per_view": 196}),
        "k400_hf": _cfg(hf_hub_id="facebook/timesformer-base-finetuned-k400", file="pytorch_model.bin"),
        "k600": _cfg(num_classes=600, paper_metrics={"top1_readme": 79.1}),
        "ssv2": _ssv2(8, 224).replace(paper_metrics={"top1_readme": 59.1}),
    }
)
def timesformer_base(**kwargs) -> TimeSformer:
    """TimeSformer (divided space-time), ViT-B/16, 8 x 224."""
    return _create(kwargs)


@register_model(
    cfgs={
        "k400": _cfg(16, 448, 16, paper_metrics={"top1_readme": 79.6}),
        "k600": _cfg(16, 448, 16, num_classes=600),
        "ssv2": _ssv2(16, 448),
    }
)
def timesformer_base_hr(**kwargs) -> TimeSformer:
    """TimeSformer-HR: ViT-B/16, 16 x 448."""
    return _create(kwargs, num_frames=16, img_size=448)


@register_model(
    cfgs={
        "k400": _cfg(96, 224, 4, paper_metrics={"top1_readme": 80.6, "gflops_3views": 7140}),
        "k600": _cfg(96, 224, 4, num_classes=600),
        "ssv2": _ssv2(64, 224),
    }
)
def timesformer_large(**kwargs) -> TimeSformer:
    """TimeSformer-L: the ViT-B/16 backbone on 96 frames at 224 (64 frames for SSv2)."""
    return _create(kwargs, num_frames=96)


@register_model(cfgs={"k400": _cfg(paper_metrics={"top1": 77.4, "params_m": 85.9})})
def timesformer_base_joint(**kwargs) -> TimeSformer:
    """TimeSformer with joint space-time attention (paper ablation)."""
    return _create(kwargs, attention="joint")


@register_model(cfgs={"k400": _cfg(paper_metrics={"top1": 76.9, "params_m": 85.9})})
def timesformer_base_space_only(**kwargs) -> TimeSformer:
    """TimeSformer with space-only attention (frames averaged at the end; paper ablation)."""
    return _create(kwargs, attention="space")


@register_model(cfgs={"k400": _cfg(paper_metrics={"top1": 75.9, "params_m": 121.4})})
def timesformer_base_local_global(**kwargs) -> TimeSformer:
    """TimeSformer with sparse local-global attention (paper ablation; not in the official code)."""
    return _create(kwargs, attention="local_global")


@register_model(cfgs={"k400": _cfg(paper_metrics={"top1": 73.5, "params_m": 156.8})})
def timesformer_base_axial(**kwargs) -> TimeSformer:
    """TimeSformer with axial T+W+H attention (paper ablation; not in the official code)."""
    return _create(kwargs, attention="axial")


@register_model(
    cfgs={"": PretrainedCfg(num_frames=4, input_size=32, num_classes=5, mean=KINETICS_MEAN, std=KINETICS_STD)}
)
def test_timesformer(**kwargs) -> TimeSformer:
    """Tiny TimeSformer for CI (dim 32, 2 blocks, 8x8 patches on 32x32 frames)."""
    return _create(kwargs, num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
