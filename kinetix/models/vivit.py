"""ViViT: A Video Vision Transformer (Arnab, Dehghani, Heigold, Sun, Lučić, Schmid; ICCV 2021).

The four models of the paper, as in google-research/scenic ``projects/vivit``:

* ``model=1`` spatio-temporal: one ViT over all ``t*h*w`` tubelet tokens (+ CLS).
* ``model=2`` factorised encoder: a spatial ViT (shared over time, own CLS, ``blocks``/``norm``) per
  time index, then a temporal ViT (``temporal_blocks``, own CLS, depth ``temporal_depth``, paper 4)
  over the per-frame CLS outputs. ``temporal_depth=0`` is the paper's average-pooling baseline.
* ``model=3`` factorised self-attention: every block attends over space then time (``order``
  configurable), no CLS, average pooling. Temporal attention output projections start at zero.
* ``model=4`` factorised dot-product attention: half the heads attend over time, half over space
  (``num_time_heads``), no CLS, average pooling.

Tokens: tubelets ``tubelet_size x patch_size x patch_size`` (2x16x16, t-major order as scenic) or, with
``tubelet_size=1``, uniform frame sampling with 2D patches. Learned positional embeddings are resized
(trilinear; FE: 2D bicubic + 1D linear) when the clip size differs from the one built for. GELU is the
tanh approximation (Flax's default, HF ``gelu_fast``).

``keep_rate < 1`` (Model 1 only) switches on EVAD's keyframe-centric token pruning
(``kinetix/layers/token_pruning.py``): tokens are put CLS, keyframe slice (``t // 2``), rest; the blocks
at ``prune_layers`` (default :func:`~kinetix.layers.token_pruning.default_prune_layers`: 4th, 7th,
10th of 12) keep the CLS and keyframe tokens (the CLS counts as a keyframe token: always kept, its
query row weighted ``keyframe_weight``) and the ``ceil(keep_rate·N) − 1 − h·w`` others that receive
the most attention; the head reads the CLS token as without pruning. Same parameters at every rate.

Input ``(B, 3, T, H, W)`` -> logits ``(B, num_classes)``; ``forward_features`` -> normed tokens
(with pruning: the kept tokens, CLS then keyframe first).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from kinetix.errors import CheckpointError
from kinetix.layers.patch_embed import PatchEmbed, TubeletEmbed
from kinetix.layers.pos_embed import resize_pos_embed, resize_pos_embed_3d, resize_time_embed
from kinetix.layers.spacetime import SpaceTimeBlock
from kinetix.layers.token_pruning import KTPSpaceTimeBlock, keyframe_first, resolve_prune_layers
from kinetix.utils.state_dict import strip_prefix

from ._pretrained import INCEPTION_MEAN, INCEPTION_STD, PretrainedCfg
from ._registry import register_model
from ._vit_init import fuse_qkv, hf_vit_keys, init_vit_weights

GELUTanh = partial(nn.GELU, approximate="tanh")  # Flax's default GELU (HF "gelu_fast")
_BLOCK_ATTENTION = {1: "joint", 2: "joint", 3: "factorised", 4: "factorised_dot"}


class ViViT(nn.Module):
    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 32,
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
        drop_path_rate: float = 0.0,
        model: int = 1,
        temporal_depth: int = 4,
        order: tuple[str, str] = ("space", "time"),
        num_time_heads: int | None = None,
        class_token: bool | None = None,
        act_layer: type[nn.Module] = GELUTanh,
        keep_rate: float = 1.0,
        keyframe_weight: float = 4.0,
        prune_layers: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if model not in _BLOCK_ATTENTION:
            raise ValueError(f"model must be 1, 2, 3 or 4 (the paper's ViViT models), got {model!r}")
        prune = resolve_prune_layers(depth, keep_rate, prune_layers)
        if prune and model != 1:
            raise ValueError(
                f"token pruning (keep_rate < 1) needs joint attention: ViViT model 1, got {model}"
            )
        self.keep_rate, self._keyframe_first = keep_rate, bool(prune)
        class_token = model in (1, 2) if class_token is None else class_token
        if class_token and model in (3, 4):
            raise ValueError("ViViT models 3 and 4 have no CLS token (the paper pools by averaging)")
        self.model, self.num_classes, self.embed_dim = model, num_classes, embed_dim
        self.num_prefix_tokens = P = int(class_token)
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        t, h, w = self.grid
        if tubelet_size == 1:  # uniform frame sampling: 2D patches per frame
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, layout="time_major")
        else:
            self.patch_embed = TubeletEmbed(
                patch_size, tubelet_size, in_chans, embed_dim, layout="time_major"
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        spatial_tokens = h * w if model == 2 else t * h * w
        self.pos_embed = nn.Parameter(torch.zeros(1, P + spatial_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        total = depth + (temporal_depth if model == 2 else 0)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        block_kw = dict(
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
            act_layer=act_layer, layout="time_major", num_prefix_tokens=P,
        )  # fmt: skip
        block = partial(
            SpaceTimeBlock, embed_dim, num_heads, _BLOCK_ATTENTION[model], order=order,
            num_time_heads=num_time_heads, **block_kw,
        )  # fmt: skip
        ktp = partial(
            KTPSpaceTimeBlock, embed_dim, num_heads, "joint", keep_rate=keep_rate,
            keyframe_weight=keyframe_weight, **block_kw,
        )  # fmt: skip
        self.blocks = nn.ModuleList((ktp if i in prune else block)(drop_path=dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if model == 2 and temporal_depth > 0:
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.temporal_pos_embed = nn.Parameter(torch.zeros(1, 1 + t, embed_dim))
            self.temporal_blocks = nn.ModuleList(
                block(drop_path=dpr[depth + i], num_prefix_tokens=1) for i in range(temporal_depth)
            )
            self.temporal_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._tokens = self._tokens_fe if model == 2 else self._tokens_st
        self._temporal = self._temporal_encoder if hasattr(self, "temporal_blocks") else self._temporal_avg
        init_vit_weights(self)
        if model == 3:  # temporal MSA starts as an identity (paper Sec. 3.4)
            for blk in self.blocks:
                nn.init.zeros_(blk.temporal_attn.proj.weight)
                nn.init.zeros_(blk.temporal_attn.proj.bias)

    def _prefix(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.cls_token is None:
            return x
        return torch.cat([(self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1), x], 1)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """CLS token, or the mean of the patch tokens: ``(B, P + N, D) -> (B, D)``."""
        return x[:, 0] if self.num_prefix_tokens else x.mean(1)

    def _tokens_st(self, x: torch.Tensor) -> torch.Tensor:
        """Models 1, 3, 4: ``(B, 3, T, H, W) -> (B, P + t*h*w, D)``."""
        x, grid = self.patch_embed(x)  # (B, t*h*w, D)
        pos = resize_pos_embed_3d(self.pos_embed, self.grid, grid, self.num_prefix_tokens)
        x = self._prefix(x + pos[:, self.num_prefix_tokens :], pos)
        x = self.pos_drop(x)
        if self._keyframe_first:  # joint attention, CLS and mean pooling do not depend on the order
            x = keyframe_first(x, grid[0], self.num_prefix_tokens)[0]
        for blk in self.blocks:
            x = blk(x, grid)
        return self.norm(x)

    def _tokens_fe(self, x: torch.Tensor) -> torch.Tensor:
        """Model 2: spatial encoder per time index, then the temporal encoder -> ``(B, 1 + t, D)``."""
        B = x.shape[0]
        x, (t, h, w) = self.patch_embed(x)  # (B, t*h*w, D)
        P = self.num_prefix_tokens
        pos = resize_pos_embed(self.pos_embed, self.grid[1:], (h, w), P)  # (1, P + hw, D)
        x = self._prefix(x.view(B * t, h * w, -1) + pos[:, P:], pos)  # (B*t, P + hw, D)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, (1, h, w))
        x = self._pool(self.norm(x)).view(B, t, -1)  # (B, t, D): one token per time index
        return self._temporal(x)

    def _temporal_encoder(self, x: torch.Tensor) -> torch.Tensor:
        B, t, _ = x.shape
        pos = self.temporal_pos_embed
        if pos.shape[1] != 1 + t:
            pos = torch.cat([pos[:, :1], resize_time_embed(pos[:, 1:], t, mode="linear")], 1)
        x = torch.cat([(self.temporal_cls_token + pos[:, :1]).expand(B, -1, -1), x + pos[:, 1:]], 1)
        for blk in self.temporal_blocks:
            x = blk(x, (t, 1, 1))
        return self.temporal_norm(x)  # (B, 1 + t, D)

    def _temporal_avg(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True)  # (B, 1, D): the average-pooling baseline

    # ---- model API -------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._tokens(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if (self.num_prefix_tokens or self.model == 2) else x.mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "temporal_pos_embed", "temporal_cls_token"}


# ---- checkpoints ----------------------------------------------------------------------------------
_HF_TOP = {
    "vivit.embeddings.cls_token": "cls_token",
    "vivit.embeddings.position_embeddings": "pos_embed",
    "vivit.embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "vivit.layernorm.": "norm.",
    "classifier.": "head.",
}


def _from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in sd.items() if not k.startswith("vivit.pooler.")}  # HF-only, unused
    return hf_vit_keys(sd, r"vivit\.(?:layers|encoder\.layer)\.(\d+)\.(.*)", _HF_TOP)


_FLAX_BLOCK = {
    "LayerNorm_0": "norm1", "LayerNorm_space": "norm1", "LayerNorm_1": "norm2", "LayerNorm_mlp": "norm2",
    "LayerNorm_time": "temporal_norm1", "MultiHeadDotProductAttention_0": "attn",
    "MultiHeadDotProductAttention_space": "attn", "MultiHeadDotProductAttention_time": "temporal_attn",
    "MlpBlock_0": "mlp", "MlpBlock": "mlp",
}  # fmt: skip
_FLAX_ENCODERS = {"Transformer": "", "SpatialTransformer": "", "TemporalTransformer": "temporal_"}
# the image ViT (vit_jax / big_vision) names of the same modules, and its classifier
_IMAGE_VIT = {"LayerNorm_2", "MultiHeadDotProductAttention_1", "MlpBlock_3", "head", "pre_logits"}
CHECKPOINT_FORMATS = (
    "kinetix weights, a scenic ViViT checkpoint (.npz of the flax tree, '/'-joined names such as "
    "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel; Models 1-4) or Hugging "
    "Face Vivit* weights (Model 1)"
)


def _flax_models(sd: dict[str, torch.Tensor]) -> tuple[set[int], str]:
    """The ViViT Models a scenic tree (prefix stripped) can be, and why; an image ViT tree
    (vit_jax / big_vision: ``MultiHeadDotProductAttention_1``, ``MlpBlock_3``, ``head``) is refused
    with the way to start a ViViT from it."""
    names = {part for k in sd for part in k.split("/")[:3]}
    if image := sorted(names & _IMAGE_VIT):
        raise CheckpointError(
            f"an image ViT checkpoint (vit_jax / big_vision names: {', '.join(image)}), not a scenic ViViT "
            "one (MultiHeadDotProductAttention_0, MlpBlock_0, output_projection). Start a ViViT from "
            "it with kinetix.models.init_from_image_vit(model, FILE) (the paper's initialisation) and "
            "fine-tune it; convert only trained ViViT checkpoints"
        )
    if "SpatialTransformer" in names:
        return {2}, "a factorised encoder: SpatialTransformer + TemporalTransformer"
    if "MultiHeadDotProductAttention_time" in names:
        return {3}, "factorised self-attention: MultiHeadDotProductAttention_space/_time"
    if "cls" in names:
        return {1}, "one Transformer with a cls token"
    return {1, 4}, "one Transformer without a cls token"


def _check_flax_model(sd: dict[str, torch.Tensor], model: ViViT) -> None:
    """A scenic tree of another ViViT Model is refused, naming the Model it looks like."""
    fits, why = _flax_models(sd)
    if model.model in fits and (model.model != 1 or (model.cls_token is not None) == (fits == {1})):
        return
    like = "Model 4 (or Model 1 without a CLS token)" if fits == {1, 4} else f"Model {min(fits)}"
    raise CheckpointError(
        f"a scenic ViViT {like} checkpoint ({why}), but the model is ViViT Model {model.model}"
        + (" with a CLS token" if model.model == 1 and model.cls_token is not None else "")
        + f". Use the Model {max(fits)} variant (vivit_base_m{max(fits)} / vivit_large_m{max(fits)}, or "
        f"model={max(fits)})"
    )


def _from_flax(sd: dict[str, torch.Tensor], model: ViViT) -> dict[str, torch.Tensor]:
    """scenic params tree flattened with '/' (``optimizer/target/...`` or ``params/...``) -> kinetix."""
    D = model.embed_dim
    out, qkv = {}, {}
    key = ""
    try:
        for key, v in strip_prefix(sd, "optimizer/target/", "params/").items():
            parts = key.split("/")
            leaf = parts[-1]
            if parts[0] == "embedding":
                if leaf == "kernel":  # (t, h, w, c, D) -> (D, c, t, h, w); 2D (h, w, c, D) -> (D, c, h, w)
                    v = v.permute(4, 3, 0, 1, 2) if v.ndim == 5 else v.permute(3, 2, 0, 1)
                    if isinstance(model.patch_embed.proj, nn.Conv2d) and v.ndim == 5:
                        v = v[:, :, 0]
                out[f"patch_embed.proj.{'weight' if leaf == 'kernel' else 'bias'}"] = v
            elif parts[0] in ("cls", "cls_SpatialTransformer"):
                out["cls_token"] = v.reshape(1, 1, D)
            elif parts[0] == "cls_TemporalTransformer":
                out["temporal_cls_token"] = v.reshape(1, 1, D)
            elif parts[0] == "output_projection":
                out[f"head.{'weight' if leaf == 'kernel' else 'bias'}"] = v.T if leaf == "kernel" else v
            elif parts[0] in _FLAX_ENCODERS:
                enc = _FLAX_ENCODERS[parts[0]]
                if parts[1] == "posembed_input":
                    out[f"{enc}pos_embed"] = v
                elif parts[1] == "encoder_norm":
                    out[f"{enc}norm.{'weight' if leaf == 'scale' else 'bias'}"] = v
                else:  # encoderblock_{i}/<module>/.../<leaf>
                    i = int(parts[1].rsplit("_", 1)[1])
                    if parts[2] not in _FLAX_BLOCK:
                        raise CheckpointError(
                            f"{key}: {parts[2]!r} is no module of a scenic ViViT block ({', '.join(_FLAX_BLOCK)})"
                        )
                    mod = _FLAX_BLOCK[parts[2]]
                    prefix = f"{enc}blocks.{i}.{mod}."
                    if mod.endswith("norm1") or mod == "norm2":
                        out[prefix + ("weight" if leaf == "scale" else "bias")] = v
                    elif mod == "mlp":
                        fc = "fc1" if parts[3] == "Dense_0" else "fc2"
                        out[f"{prefix}{fc}.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                            v.T if leaf == "kernel" else v
                        )
                    elif parts[3] == "out":  # kernel (heads, hd, D) -> (D, D)
                        out[f"{prefix}proj.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                            v.reshape(D, D).T if leaf == "kernel" else v
                        )
                    else:  # query/key/value: kernel (D, heads, hd) -> (D, D).T; bias (heads, hd) -> (D,)
                        w = v.reshape(D, D).T if leaf == "kernel" else v.reshape(D)
                        qkv.setdefault(prefix, {})[
                            f"{parts[3][0]}.{'weight' if leaf == 'kernel' else 'bias'}"
                        ] = w
            else:
                out[key] = v
    except RuntimeError as e:  # a tensor whose size does not fit the model's width
        raise CheckpointError(f"{key} {tuple(v.shape)}: does not fit a ViViT of width {D} ({e})") from None
    fuse_qkv(qkv, out)
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ViViT) -> dict[str, torch.Tensor]:
    """Hugging Face ``Vivit*`` (Model 1) or scenic (flax tree saved as npz, '/'-joined keys) weights
    -> kinetix names; positional embeddings are resized to the model's grid."""
    sd = strip_prefix(state_dict, "module.")
    if any(k.startswith("vivit.") for k in sd):
        sd = _from_hf(sd)
    elif any("/" in k for k in sd):
        _check_flax_model(strip_prefix(sd, "optimizer/target/", "params/"), model)
        sd = _from_flax(sd, model)
    own = model.state_dict()
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = _resize_ckpt_pos(sd["pos_embed"], model)
    return sd


def _resize_ckpt_pos(pos: torch.Tensor, model: ViViT) -> torch.Tensor:
    P, (t, h, w) = model.num_prefix_tokens, model.grid
    n = pos.shape[1] - P
    if model.model == 2:
        side = round(n**0.5)
        return resize_pos_embed(pos, (side, side), (h, w), P)
    for old_t in range(1, n + 1):  # same spatial grid assumed when the frame count differs
        if n == old_t * h * w:
            return resize_pos_embed_3d(pos, (old_t, h, w), (t, h, w), P)
    return pos  # let the strict loader report the mismatch


# ---- registered models ---------------------------------------------------------------------------
_SRC = "https://github.com/google-research/scenic/tree/main/scenic/projects/vivit"


def _cfg(**kw) -> PretrainedCfg:
    return PretrainedCfg(
        num_frames=32, input_size=224, mean=INCEPTION_MEAN, std=INCEPTION_STD, sampling="dense",
        frame_interval=2, test_views=(4, 3), source=_SRC, licence="Apache-2.0", **kw,
    )  # fmt: skip


def _create(kwargs, **defaults) -> ViViT:
    if "input_size" in kwargs:
        kwargs["img_size"] = kwargs.pop("input_size")
    return ViViT(**{**defaults, **kwargs})


_LARGE = dict(embed_dim=1024, depth=24, num_heads=16)


@register_model(
    cfgs={
        "k400": _cfg(paper_metrics={"top1_readme": 79.9, "gflops_paper": 455.2, "params_m_paper": 88.9}),
        "k400_hf": _cfg(hf_hub_id="google/vivit-b-16x2-kinetics400", file="model.safetensors"),
    }
)
def vivit_base_m1(**kwargs) -> ViViT:
    """ViViT-B/16x2 Model 1 (spatio-temporal attention, CLS)."""
    return _create(kwargs, model=1)


@register_model(
    cfgs={"k400": _cfg(paper_metrics={"top1_readme": 78.4, "gflops_paper": 284.4, "params_m_paper": 115.1})}
)
def vivit_base_m2(**kwargs) -> ViViT:
    """ViViT-B/16x2 Model 2 (factorised encoder, temporal depth 4)."""
    return _create(kwargs, model=2)


@register_model(cfgs={"k400": _cfg(paper_metrics={"gflops_paper": 372.3, "params_m_paper": 117.3})})
def vivit_base_m3(**kwargs) -> ViViT:
    """ViViT-B/16x2 Model 3 (factorised self-attention, space then time)."""
    return _create(kwargs, model=3)


@register_model(cfgs={"k400": _cfg(paper_metrics={"gflops_paper": 277.1, "params_m_paper": 88.9})})
def vivit_base_m4(**kwargs) -> ViViT:
    """ViViT-B/16x2 Model 4 (factorised dot-product attention)."""
    return _create(kwargs, model=4)


@register_model(cfgs={"k400": _cfg(paper_metrics={"top1": 80.6})})
def vivit_large_m1(**kwargs) -> ViViT:
    return _create(kwargs, model=1, **_LARGE)


@register_model(cfgs={"k400": _cfg(paper_metrics={"top1_readme": 80.3}), "k600": _cfg(num_classes=600)})
def vivit_large_m2(**kwargs) -> ViViT:
    return _create(kwargs, model=2, **_LARGE)


@register_model(cfgs={"k400": _cfg()})
def vivit_large_m3(**kwargs) -> ViViT:
    return _create(kwargs, model=3, **_LARGE)


@register_model(cfgs={"k400": _cfg()})
def vivit_large_m4(**kwargs) -> ViViT:
    return _create(kwargs, model=4, **_LARGE)


@register_model(
    cfgs={
        "": PretrainedCfg(num_frames=4, input_size=32, num_classes=5, mean=INCEPTION_MEAN, std=INCEPTION_STD)
    }
)
def test_vivit(**kwargs) -> ViViT:
    """Tiny ViViT for CI (any ``model=1..4``; dim 32, 2 blocks, 2x8x8 tubelets on 4x32x32 clips)."""
    return _create(
        kwargs, num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, temporal_depth=1
    )
