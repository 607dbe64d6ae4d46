"""Weight initialisation of the video transformers, and their initialisation from image ViTs.

``init_vit_weights(model)``: timm/official ViT init (truncated normal 0.02 for Linear weights and the
``pos_embed``/``cls_token`` parameters, zero biases, LayerNorm (1, 0)); every ``*_fc`` of a
:class:`~kinetix.layers.spacetime.SpaceTimeBlock` is then zeroed again so each extra attention stage
starts as an identity.

``init_from_image_vit(model, weights)``: initialise TimeSformer / ViViT / VideoMAE from an image ViT
(timm, Hugging Face or original JAX layout), as the papers do (see its docstring).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import CheckpointError
from kinetix.layers.pos_embed import resize_pos_embed, tile_pos_embed
from kinetix.layers.weight_init import trunc_normal_init_
from kinetix.utils.state_dict import read_state_dict, strip_prefix


def init_vit_weights(model: nn.Module) -> None:
    """ViT init; ``*_fc`` linears (TimeSformer's ``temporal_fc``) start at zero."""
    trunc_normal_init_(model)
    for name, m in model.named_modules():
        if name.split(".")[-1].endswith("_fc") and isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.split(".")[-1] in ("pos_embed", "cls_token", "temporal_cls_token", "temporal_pos_embed"):
            nn.init.trunc_normal_(p, std=0.02)


# ---- initialisation from an image ViT ------------------------------------------------------------
# The one Hugging Face ViT block key table (TimeSformer, ViViT, VideoMAE and image ViTs use it).
HF_VIT_BLOCK = (  # (HF prefix inside ``...layer.N.``, kinetix/timm prefix); transformers 5, then 4
    ("attention.o_proj.", "attn.proj."), ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
)  # fmt: skip
_HF_QKV = re.compile(r"attention\.(?:(q|k|v)_proj|attention\.(query|key|value))\.(weight|bias)$")
_JAX_BLOCK = {"LayerNorm_0": "norm1", "LayerNorm_2": "norm2", "MultiHeadDotProductAttention_1": "attn",
              "MlpBlock_3": "mlp"}  # fmt: skip


def fuse_qkv(parts: dict[str, dict[str, torch.Tensor]], out: dict[str, torch.Tensor]) -> None:
    """``{block_prefix: {'q.weight': ..., 'k.bias': ...}}`` -> fused ``qkv.weight`` / ``qkv.bias``."""
    for prefix, p in parts.items():
        out[f"{prefix}qkv.weight"] = torch.cat([p["q.weight"], p["k.weight"], p["v.weight"]])
        if "q.bias" in p:
            out[f"{prefix}qkv.bias"] = torch.cat([p["q.bias"], p["k.bias"], p["v.bias"]])


def hf_vit_keys(
    sd: dict[str, torch.Tensor], layer: str, top: dict[str, str], extra: tuple = ()
) -> dict[str, torch.Tensor]:
    """Hugging Face ViT-family keys -> kinetix (timm) keys.

    ``layer``: regex matching a block key, groups ``(index, rest)`` (e.g.
    ``vivit\\.encoder\\.layer\\.(\\d+)\\.(.*)``); ``rest`` is renamed by ``extra`` (model-specific
    ``(prefix, new)`` pairs, tried first), else separate query/key/value projections are fused into
    ``attn.qkv``, else :data:`HF_VIT_BLOCK`; unknown block keys are kept as they are. Other keys are
    renamed by the first matching prefix of ``top``."""
    out, qkv = {}, {}
    pattern = re.compile(layer)
    for k, v in sd.items():
        m = pattern.match(k)
        if m:
            i, rest = m.groups()
            new = next((n + rest[len(o) :] for o, n in extra if rest.startswith(o)), None)
            mq = _HF_QKV.match(rest) if new is None else None
            if mq:
                qkv.setdefault(f"blocks.{i}.attn.", {})[
                    f"{(mq.group(1) or mq.group(2))[0]}.{mq.group(3)}"
                ] = v
                continue
            if new is None:
                new = next((n + rest[len(o) :] for o, n in HF_VIT_BLOCK if rest.startswith(o)), None)
            out[f"blocks.{i}.{new}" if new is not None else k] = v
            continue
        out[next((n + k[len(o) :] for o, n in top.items() if k.startswith(o)), k)] = v
    fuse_qkv(qkv, out)
    return out


def _hf_vit_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    top = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.": "patch_embed.proj.", "layernorm.": "norm.",
           "classifier.": "head."}  # fmt: skip
    sd = {k.removeprefix("vit."): v for k, v in sd.items()}
    return hf_vit_keys(sd, r"(?:layers|encoder\.layer)\.(\d+)\.(.*)", top)


def _jax_vit_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original JAX ViT (``.npz`` of the big_vision/vit_jax params tree, '/'-joined keys) -> timm."""
    out, qkv = {}, {}
    D = sd["cls"].shape[-1] if "cls" in sd else sd["embedding/bias"].shape[0]
    wb = {"kernel": "weight", "scale": "weight", "bias": "bias"}
    for k, v in sd.items():
        parts = k.split("/")
        leaf = wb.get(parts[-1], parts[-1])
        if parts[0] == "embedding":
            out[f"patch_embed.proj.{leaf}"] = (
                v.permute(3, 2, 0, 1) if v.ndim == 4 else v
            )  # (p,p,C,D)->(D,C,p,p)
        elif parts[0] == "cls":
            out["cls_token"] = v.reshape(1, 1, D)
        elif parts[0] == "head":
            out[f"head.{leaf}"] = v.T if v.ndim == 2 else v
        elif parts[:2] == ["Transformer", "posembed_input"]:
            out["pos_embed"] = v
        elif parts[:2] == ["Transformer", "encoder_norm"]:
            out[f"norm.{leaf}"] = v
        elif parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
            i, mod = int(parts[1].rsplit("_", 1)[1]), _JAX_BLOCK.get(parts[2], parts[2])
            if mod in ("norm1", "norm2"):
                out[f"blocks.{i}.{mod}.{leaf}"] = v
            elif mod == "mlp":
                fc = {"Dense_0": "fc1", "Dense_1": "fc2"}[parts[3]]
                out[f"blocks.{i}.mlp.{fc}.{leaf}"] = v.T if v.ndim == 2 else v
            elif parts[3] == "out":  # kernel (heads, hd, D)
                out[f"blocks.{i}.attn.proj.{leaf}"] = v.reshape(D, D).T if leaf == "weight" else v
            else:  # query/key/value kernel (D, heads, hd), bias (heads, hd)
                w = v.reshape(D, D).T if leaf == "weight" else v.reshape(D)
                qkv.setdefault(f"blocks.{i}.attn.", {})[f"{parts[3][0]}.{leaf}"] = w
        else:
            out[k] = v
    fuse_qkv(qkv, out)
    return out


def image_vit_state_dict(state_dict_or_path) -> dict[str, torch.Tensor]:
    """Read an image ViT (timm, Hugging Face ``ViTModel``/``ViTForImageClassification``, or original
    JAX ``.npz``) into timm key names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``)."""
    if isinstance(state_dict_or_path, (str, Path)):
        sd = read_state_dict(state_dict_or_path)
    else:
        sd = dict(state_dict_or_path)
    source = state_dict_or_path if isinstance(state_dict_or_path, (str, Path)) else "state dict"
    sd = strip_prefix(sd, "module.", "model.")
    try:
        if any("/" in k for k in sd):
            sd = _jax_vit_to_timm(strip_prefix(sd, "params/", "optimizer/target/"))
        elif any(k.removeprefix("vit.").startswith(("embeddings.", "layers.", "encoder.layer.")) for k in sd):
            sd = _hf_vit_to_timm(sd)
    except (KeyError, IndexError, ValueError, RuntimeError) as e:  # a name or shape of another layout
        raise CheckpointError(
            f"{source}: not an image ViT this reader knows ({type(e).__name__}: {e}); expected the "
            "big_vision / vit_jax ViT .npz (Transformer/encoderblock_N/{LayerNorm_0, "
            "MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}), Hugging Face ViT or timm weights. "
            "A ViViT scenic checkpoint is loaded with create_model(NAME, checkpoint=FILE) instead"
        ) from None
    if "patch_embed.proj.weight" not in sd or "blocks.0.attn.qkv.weight" not in sd:
        raise CheckpointError(
            f"{source}: not an image ViT (expected timm, Hugging Face ViT or JAX ViT weights with a patch "
            "embedding and transformer blocks)"
        )
    return sd


def _copy(dst: dict, src: dict, dst_prefix: str, src_prefix: str) -> None:
    for k in [k for k in dst if k.startswith(dst_prefix)]:
        sk = src_prefix + k[len(dst_prefix) :]
        if sk in src:
            dst[k] = src[sk].to(dst[k].dtype).reshape(dst[k].shape)


def init_from_image_vit(
    model: nn.Module, state_dict_or_path, tubelet_init: str = "central", temporal_init: str = "zero"
) -> nn.Module:
    """Initialise a video transformer (TimeSformer, ViViT, VideoMAE) from image-ViT weights.

    * Patch embedding: copied per frame; for tubelets ``tubelet_init="central"`` puts the image filter at
      the central frame and zeros elsewhere (ViViT's default), ``"inflate"`` repeats it over time / t.
    * Positional embedding: resized (bicubic) to the model's spatial grid, then tiled over time when the
      model has one learned embedding per space-time token (ViViT models 1, 3, 4). A CLS row is dropped
      for models without CLS. Time embeddings and VideoMAE's fixed table are left alone.
    * Blocks: ``norm1``/``attn``/``norm2``/``mlp`` copied. Extra attention stages that have a ``*_fc``
      (TimeSformer) are copied from the spatial attention with the fc zeroed, as the official code;
      those without (ViViT model 3's temporal attention) follow ``temporal_init``: ``"zero"`` (paper:
      output projection zero, so the stage is an identity) or ``"copy"`` (scenic's default).
    * ViViT model 2: the spatial encoder (``blocks``, ``norm``, ``cls_token``, ``pos_embed``) comes from
      the image model; the temporal encoder keeps its random initialisation. The classifier is untouched.
    """

    if tubelet_init not in ("central", "inflate"):
        raise ValueError(f"tubelet_init must be 'central' or 'inflate', got {tubelet_init!r}")
    if temporal_init not in ("zero", "copy"):
        raise ValueError(f"temporal_init must be 'zero' or 'copy', got {temporal_init!r}")
    img = image_vit_state_dict(state_dict_or_path)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    D = own["patch_embed.proj.weight"].shape[0]
    if img["patch_embed.proj.weight"].shape[0] != D:
        raise CheckpointError(
            f"image ViT width {img['patch_embed.proj.weight'].shape[0]} != model width {D}; "
            "pick the matching model size (B/16 for ViT-B, L/16 for ViT-L)"
        )
    depth = len(model.blocks)
    if f"blocks.{depth - 1}.attn.qkv.weight" not in img:
        raise CheckpointError(f"the image ViT has fewer than the model's {depth} blocks")

    # patch / tubelet embedding
    w_img, w = img["patch_embed.proj.weight"], own["patch_embed.proj.weight"]
    if w_img.shape[-2:] != w.shape[-2:]:
        w_img = F.interpolate(w_img, size=w.shape[-2:], mode="bicubic", align_corners=False)
    if w.ndim == 5:  # (D, C, t, p, p)
        t = w.shape[2]
        if tubelet_init == "central":
            w = torch.zeros_like(w)
            w[:, :, t // 2] = w_img
        else:
            w = w_img.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        own["patch_embed.proj.weight"] = w
    else:
        own["patch_embed.proj.weight"] = w_img
    if "patch_embed.proj.bias" in own and "patch_embed.proj.bias" in img:
        own["patch_embed.proj.bias"] = img["patch_embed.proj.bias"]

    # CLS and positional embedding
    P = getattr(model, "num_prefix_tokens", 0)
    if "cls_token" in own and "cls_token" in img:
        own["cls_token"] = img["cls_token"]
    if "pos_embed" in own and "pos_embed" in img:
        pos = img["pos_embed"]
        P_img = 1 if "cls_token" in img else 0
        n = pos.shape[1] - P_img
        side = round(n**0.5)
        _, gh, gw = model.grid
        pos = resize_pos_embed(pos, (side, side), (gh, gw), P_img)
        prefix, grid = pos[:, :P_img], pos[:, P_img:]
        prefix = prefix if P and P_img else own["pos_embed"][:, :P]
        pos = torch.cat([prefix, grid], 1)  # (1, P + h*w, D)
        target = own["pos_embed"].shape[1]
        if target != pos.shape[1]:  # one embedding per space-time token: repeat the grid over time
            pos = tile_pos_embed(pos, (target - P) // (gh * gw), P)
        own["pos_embed"] = pos

    # transformer blocks
    stage_prefixes = {
        k.split(".")[2].removesuffix("attn") for k in own if re.match(r"blocks\.\d+\.\w*attn\.", k)
    }
    for i in range(depth):
        _copy(own, img, f"blocks.{i}.norm1.", f"blocks.{i}.norm1.")
        _copy(own, img, f"blocks.{i}.norm2.", f"blocks.{i}.norm2.")
        _copy(own, img, f"blocks.{i}.mlp.", f"blocks.{i}.mlp.")
        _copy_attn(own, img, f"blocks.{i}.attn.", f"blocks.{i}.attn.")
        for s in stage_prefixes - {""}:
            has_fc = f"blocks.{i}.{s}fc.weight" in own
            if has_fc or temporal_init == "copy":
                _copy_attn(own, img, f"blocks.{i}.{s}attn.", f"blocks.{i}.attn.")
                _copy(own, img, f"blocks.{i}.{s}norm1.", f"blocks.{i}.norm1.")
            if has_fc:
                own[f"blocks.{i}.{s}fc.weight"].zero_()
                own[f"blocks.{i}.{s}fc.bias"].zero_()
            elif temporal_init == "zero":
                own[f"blocks.{i}.{s}attn.proj.weight"].zero_()
                own[f"blocks.{i}.{s}attn.proj.bias"].zero_()
    if "norm.weight" in own and "norm.weight" in img:
        _copy(own, img, "norm.", "norm.")
    model.load_state_dict(own)
    return model


def _copy_attn(dst: dict, src: dict, dst_prefix: str, src_prefix: str) -> None:
    dst[f"{dst_prefix}qkv.weight"] = src[f"{src_prefix}qkv.weight"]
    dst[f"{dst_prefix}proj.weight"] = src[f"{src_prefix}proj.weight"]
    dst[f"{dst_prefix}proj.bias"] = src[f"{src_prefix}proj.bias"]
    bias = src.get(f"{src_prefix}qkv.bias")
    if bias is None:
        return
    if f"{dst_prefix}qkv.bias" in dst:
        dst[f"{dst_prefix}qkv.bias"] = bias
    elif f"{dst_prefix}q_bias" in dst:  # VideoMAE-style attention: the key bias is dropped
        q, _, v = bias.chunk(3)
        dst[f"{dst_prefix}q_bias"], dst[f"{dst_prefix}v_bias"] = q, v
