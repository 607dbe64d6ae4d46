from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kinetix.errors import ConfigError
from kinetix.models import create_model
from kinetix.models._complexity import model_complexity

# Paper Table 2 (ViViT-B/16x2, 32 frames; marked unverified in the reference notes): GFLOPs, params (M).
# Our counts are GMACs of matmuls/convs only (softmax, LayerNorm, GELU are not counted).
PAPER = [
    ("vivit_base_m1", {}, 455.2, 88.9),
    ("vivit_base_m2", {}, 284.4, 115.1),
    ("vivit_base_m3", {}, 372.3, 117.3),
    ("vivit_base_m4", {}, 277.1, 88.9),
    ("vivit_base_m2", {"temporal_depth": 0}, 283.9, 86.7),  # the average-pooling baseline
    ("vivit_large_m2", {}, 995.3, None),  # Sec. 4: ViViT-L/16x2 FE, 32 frames, per view
]


@pytest.mark.parametrize(("name", "kw", "gflops", "mparams"), PAPER)
def test_params_and_gmacs_match_paper(name, kw, gflops, mparams):
    r = model_complexity(name, **kw)
    assert abs(r.gmacs - gflops) / gflops < 0.01, r.gmacs
    if mparams is not None:
        assert abs(r.mparams - mparams) / mparams < 0.01, r.mparams


@pytest.mark.parametrize("model", [1, 2, 3, 4])
@pytest.mark.parametrize("tubelet_size", [2, 1])
def test_other_clip_sizes_and_api(model, tubelet_size):
    m = create_model("test_vivit", model=model, tubelet_size=tubelet_size).eval()
    assert m(torch.randn(2, 3, 4, 32, 32)).shape == (2, 5)
    y = m(torch.randn(1, 3, 8, 40, 48))  # more frames, another resolution: embeddings resized
    assert y.shape == (1, 5) and torch.isfinite(y).all()
    assert type(m.patch_embed.proj).__name__ == ("Conv3d" if tubelet_size == 2 else "Conv2d")
    m.reset_classifier(3)
    assert m.get_classifier().out_features == 3
    assert "pos_embed" in m.no_weight_decay()


def test_models_3_and_4_have_no_cls_and_model_3_starts_with_identity_temporal_attention():
    for model in (3, 4):
        assert create_model("test_vivit", model=model).cls_token is None
        with pytest.raises((ValueError, ConfigError), match="no CLS"):  # create_model wraps it
            create_model("test_vivit", model=model, class_token=True)
    m3 = create_model("test_vivit", model=3)
    assert all((b.temporal_attn.proj.weight == 0).all() for b in m3.blocks)
    assert create_model("test_vivit", model=4).blocks[0].num_time_heads == 1


def test_factorised_encoder_is_a_shared_spatial_encoder_per_time_index():
    m = create_model("test_vivit", model=2).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    per_time = []
    for i in range(2):  # time index i covers frames 2i, 2i+1 (tubelet 2); a direct loop as reference
        tok, _ = m.patch_embed(x[:, :, 2 * i : 2 * i + 2])
        tok = torch.cat([(m.cls_token + m.pos_embed[:, :1]).expand(2, -1, -1), tok + m.pos_embed[:, 1:]], 1)
        for blk in m.blocks:
            tok = blk(tok)
        per_time.append(m.norm(tok)[:, 0])
    z = torch.stack(per_time, 1)  # (B, t, D)
    z = torch.cat([(m.temporal_cls_token + m.temporal_pos_embed[:, :1]).expand(2, -1, -1),
                   z + m.temporal_pos_embed[:, 1:]], 1)  # fmt: skip
    for blk in m.temporal_blocks:
        z = blk(z)
    torch.testing.assert_close(m.forward_features(x), m.temporal_norm(z), atol=1e-5, rtol=1e-5)


# ---- scenic checkpoints ---------------------------------------------------------------------------
# The parameter tree a scenic ViViT checkpoint holds (google-research/scenic ``projects/vivit/model.py``,
# ``model_lib/layers/attention_layers.py``, ``projects/baselines/vit.py``), D = hidden size, H heads,
# hd = D / H; Flax linen names sub-modules ``<Class>_<n>``, counting per class:
#   embedding/kernel (ft, fh, fw, 3, D), embedding/bias (D,)   nn.Conv(name='embedding') on (n, t, h, w, c);
#                                                               patches.size = (fh, fw, ft), stride = kernel
#     (temporal_sampling: a 2D nn.Conv, kernel (fh, fw, 3, D), on the frames stacked as (n, t*h, w, c))
#   cls (1, 1, D)                                               ViViT.param('cls'), classifier 'token' (Model 1)
#   Transformer/posembed_input/pos_embedding (1, [1 +] t*h*w, D)  vit.AddPositionEmbs, tokens t-major
#   Transformer/encoderblock_{i}/ (EncoderBlock: Models 1, 2, 4)
#     LayerNorm_0, LayerNorm_1 /{scale, bias} (D,)              nn.LayerNorm (epsilon 1e-6)
#     MultiHeadDotProductAttention_0/{query,key,value}/kernel (D, H, hd), bias (H, hd); out/kernel (H, hd, D),
#       out/bias (D,)                                           (the released K400 Model 1 checkpoint uses these
#                                                               names: HF convert_vivit_flax_to_pytorch.py)
#     MlpBlock_0/Dense_0/kernel (D, mlp), bias (mlp,); Dense_1/kernel (mlp, D), bias (D,)   gelu (tanh)
#   Model 3, EncoderFactorizedSelfAttentionBlock (explicit names): LayerNorm_space, MultiHeadDotProductAttention_space,
#     LayerNorm_time, MultiHeadDotProductAttention_time, LayerNorm_mlp, MlpBlock
#   Transformer/encoder_norm/{scale, bias}; output_projection/kernel (D, classes), bias (classes,)
#   Model 2 (SpaceTimeViViT): SpatialTransformer/... (pos (1, 1 + h*w, D)), TemporalTransformer/...
#     (pos (1, 1 + t, D)), cls_SpatialTransformer, cls_TemporalTransformer (1, 1, D)
# Models 3 and 4 pool by averaging the tokens ('gap'); Model 4 splits the heads in two, the first half
# attends over time, the second over space (model_utils.factorized_dot_product_attention).
_D, _H, _MLP, _DEPTH, _GRID, _TUBE, _CLASSES = 32, 2, 128, 2, (2, 4, 4), (2, 8, 8), 5


def _scenic_tree(model, seed=0, tubelet=2):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, mean=0.0):
        return torch.randn(*shape, generator=g) * 0.2 + mean

    def ln():
        return {"scale": r(_D, mean=1.0), "bias": r(_D)}

    def mha():
        d = {n: {"kernel": r(_D, _H, _D // _H), "bias": r(_H, _D // _H)} for n in ("query", "key", "value")}
        return d | {"out": {"kernel": r(_H, _D // _H, _D), "bias": r(_D)}}

    def mlp():
        return {
            "Dense_0": {"kernel": r(_D, _MLP), "bias": r(_MLP)},
            "Dense_1": {"kernel": r(_MLP, _D), "bias": r(_D)},
        }

    def encoder(tokens, depth, factorised=False):
        enc = {"posembed_input": {"pos_embedding": r(1, tokens, _D)}, "encoder_norm": ln()}
        for i in range(depth):
            if factorised:
                enc[f"encoderblock_{i}"] = {
                    "LayerNorm_space": ln(), "MultiHeadDotProductAttention_space": mha(),
                    "LayerNorm_time": ln(), "MultiHeadDotProductAttention_time": mha(),
                    "LayerNorm_mlp": ln(), "MlpBlock": mlp(),
                }  # fmt: skip
            else:
                enc[f"encoderblock_{i}"] = {"LayerNorm_0": ln(), "MultiHeadDotProductAttention_0": mha(),
                                            "LayerNorm_1": ln(), "MlpBlock_0": mlp()}  # fmt: skip
        return enc

    t, h, w = _GRID[0] * 2 // tubelet, *_GRID[1:]
    kernel = r(*_TUBE, 3, _D) if tubelet == 2 else r(*_TUBE[1:], 3, _D)
    tree = {"embedding": {"kernel": kernel, "bias": r(_D)},
            "output_projection": {"kernel": r(_D, _CLASSES), "bias": r(_CLASSES)}}  # fmt: skip
    if model == 2:
        tree |= {"cls_SpatialTransformer": r(1, 1, _D), "cls_TemporalTransformer": r(1, 1, _D),
                 "SpatialTransformer": encoder(1 + h * w, _DEPTH), "TemporalTransformer": encoder(1 + t, 1)}  # fmt: skip
    else:
        tree["Transformer"] = encoder((model == 1) + t * h * w, _DEPTH, factorised=model == 3)
        if model == 1:
            tree["cls"] = r(1, 1, _D)
    return tree


def _flatten(tree, prefix="optimizer/target"):
    out = {}
    for k, v in tree.items():
        out |= _flatten(v, f"{prefix}/{k}") if isinstance(v, dict) else {f"{prefix}/{k}": v.numpy()}
    return out


def _ln(x, p):
    return F.layer_norm(x, (x.shape[-1],), p["scale"], p["bias"], eps=1e-6)


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _mlp(x, p):
    return _dense(F.gelu(_dense(x, p["Dense_0"]), approximate="tanh"), p["Dense_1"])


def _heads(x, p):  # DenseGeneral to (H, hd): (..., D) -> (..., H, hd)
    return torch.einsum("...d,dhk->...hk", x, p["kernel"]) + p["bias"]


def _softmax_attention(q, k, v):  # (..., L, hd) each
    return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ v


def _mhdpa(x, p):
    """nn.MultiHeadDotProductAttention self-attention over the tokens of ``x (..., L, D)``."""
    q, k, v = (_heads(x, p[n]).transpose(-2, -3) for n in ("query", "key", "value"))  # (..., H, L, hd)
    o = _softmax_attention(q, k, v).transpose(-2, -3)  # (..., L, H, hd)
    return torch.einsum("...hk,hkd->...d", o, p["out"]["kernel"]) + p["out"]["bias"]


def _encoder_block(x, p):
    x = x + _mhdpa(_ln(x, p["LayerNorm_0"]), p["MultiHeadDotProductAttention_0"])
    return x + _mlp(_ln(x, p["LayerNorm_1"]), p["MlpBlock_0"])


def _factorised_self_attention_block(x, p, order, t):
    """Model 3 as two explicit passes: 'space' = attention among the h*w tokens of each frame,
    'time' = attention among the t tokens of each spatial location, in ``order``; then the MLP."""
    n, N, D = x.shape
    x = x.reshape(n, t, N // t, D)  # (n, t, hw, D)
    for axis in order:
        if axis == "space":
            x = torch.stack([x[:, f] + _mhdpa(_ln(x[:, f], p["LayerNorm_space"]), p["MultiHeadDotProductAttention_space"])
                             for f in range(t)], 1)  # fmt: skip
        else:
            x = torch.stack([x[:, :, s] + _mhdpa(_ln(x[:, :, s], p["LayerNorm_time"]), p["MultiHeadDotProductAttention_time"])
                             for s in range(N // t)], 2)  # fmt: skip
    x = x.reshape(n, N, D)
    return x + _mlp(_ln(x, p["LayerNorm_mlp"]), p["MlpBlock"])


def _factorised_dot_product_block(x, p, t):
    """Model 4: an EncoderBlock whose heads [0, H/2) attend over time (per location) and [H/2, H) over
    space (per frame), one loop per head."""
    n, N, D = x.shape
    a = p["MultiHeadDotProductAttention_0"]
    y = _ln(x, p["LayerNorm_0"]).reshape(n, t, N // t, D)
    q, k, v = (_heads(y, a[m]) for m in ("query", "key", "value"))  # (n, t, hw, H, hd)
    o = torch.empty_like(q)
    for hh in range(_H):
        if hh < _H // 2:  # over time: (n, hw, t, hd)
            qh, kh, vh = (z[..., hh, :].transpose(1, 2) for z in (q, k, v))
            o[..., hh, :] = _softmax_attention(qh, kh, vh).transpose(1, 2)
        else:  # over space: (n, t, hw, hd)
            o[..., hh, :] = _softmax_attention(q[..., hh, :], k[..., hh, :], v[..., hh, :])
    x = x + (torch.einsum("...hk,hkd->...d", o, a["out"]["kernel"]) + a["out"]["bias"]).reshape(n, N, D)
    return x + _mlp(_ln(x, p["LayerNorm_1"]), p["MlpBlock_0"])


def _encoder(x, enc, block):
    x = x + enc["posembed_input"]["pos_embedding"]
    for i in range(sum(k.startswith("encoderblock_") for k in enc)):
        x = block(x, enc[f"encoderblock_{i}"])
    return _ln(x, enc["encoder_norm"])


def _scenic_forward(tree, video, model, order=("space", "time")):
    """scenic's ViViT / SpaceTimeViViT forward, written from the tree above (independent of kinetix)."""
    x = video.permute(0, 2, 3, 4, 1)  # (n, T, H, W, c): scenic is channels-last
    n, T, Hp, Wp, c = x.shape
    kernel = tree["embedding"]["kernel"]
    if kernel.ndim == 5:  # 3d_conv: tubelets
        (ft, fh, fw), t = _TUBE, T // _TUBE[0]
        x = x.reshape(n, t, ft, Hp // fh, fh, Wp // fw, fw, c)
        x = torch.einsum("ntahbwec,abecd->nthwd", x, kernel)
    else:  # temporal_sampling: 2D patches of every frame
        (fh, fw), t = _TUBE[1:], T
        x = torch.einsum("nthbwec,becd->nthwd", x.reshape(n, T, Hp // fh, fh, Wp // fw, fw, c), kernel)
    x = x + tree["embedding"]["bias"]
    x = x.reshape(n, t, -1, _D)  # (n, t, h*w, D): tokens t-major
    if model == 2:  # the spatial encoder per time index (vmap over t), then the temporal encoder
        frames = []
        for i in range(t):
            z = torch.cat([tree["cls_SpatialTransformer"].expand(n, -1, -1), x[:, i]], 1)
            frames.append(_encoder(z, tree["SpatialTransformer"], _encoder_block)[:, 0])
        z = torch.cat([tree["cls_TemporalTransformer"].expand(n, -1, -1), torch.stack(frames, 1)], 1)
        return _dense(
            _encoder(z, tree["TemporalTransformer"], _encoder_block)[:, 0], tree["output_projection"]
        )
    x = x.flatten(1, 2)  # (n, t*h*w, D)
    if model == 1:
        x = torch.cat([tree["cls"].expand(n, -1, -1), x], 1)
        return _dense(_encoder(x, tree["Transformer"], _encoder_block)[:, 0], tree["output_projection"])
    if model == 3:
        block = partial(_factorised_self_attention_block, order=order, t=t)
    else:
        block = partial(_factorised_dot_product_block, t=t)
    return _dense(_encoder(x, tree["Transformer"], block).mean(1), tree["output_projection"])  # 'gap'


@pytest.mark.parametrize(("model", "tubelet"), [(1, 2), (2, 2), (3, 2), (4, 2), (1, 1)])
def test_scenic_npz_converts(model, tubelet, tmp_path):
    tree = _scenic_tree(model, tubelet=tubelet)
    np.savez(tmp_path / "scenic.npz", **_flatten(tree))
    ours = create_model(
        "test_vivit", model=model, tubelet_size=tubelet, checkpoint=str(tmp_path / "scenic.npz")
    )
    ours.eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _scenic_forward(tree, x, model), atol=1e-4, rtol=1e-4)


def test_model3_order_matches_explicit_two_pass_reference(tmp_path):
    """Default space then time (paper Fig. 5), ``order=("time", "space")`` = scenic's 'time_space'; each
    against the two-pass loop above, and the two orders give different outputs on these weights."""
    tree = _scenic_tree(3, seed=1)
    np.savez(tmp_path / "m3.npz", **_flatten(tree))
    x = torch.randn(1, 3, 4, 32, 32)
    refs = {}
    for order in (("space", "time"), ("time", "space")):
        kw = {} if order == ("space", "time") else {"order": order}
        m = create_model("test_vivit", model=3, checkpoint=str(tmp_path / "m3.npz"), **kw).eval()
        refs[order] = _scenic_forward(tree, x, 3, order)
        with torch.no_grad():
            torch.testing.assert_close(m(x), refs[order], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(refs["space", "time"], refs["time", "space"], atol=1e-2)


def test_hf_transformers4_key_names_convert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=5)  # fmt: skip
    hf = transformers.VivitForVideoClassification(cfg).eval()
    v4 = {"q_proj": "attention.query", "k_proj": "attention.key", "v_proj": "attention.value",
          "o_proj": "output.dense"}  # fmt: skip
    sd = {}
    for k, v in hf.state_dict().items():  # rename to the transformers-4 layout of the hub checkpoints
        k = k.replace("vivit.layers.", "vivit.encoder.layer.").replace("mlp.fc1", "intermediate.dense")
        k = k.replace("mlp.fc2", "output.dense")
        for new, old in v4.items():
            k = k.replace(f"attention.{new}", f"attention.{old}")
        sd[k] = v
    assert "vivit.encoder.layer.0.attention.attention.query.weight" in sd
    ours = create_model("test_vivit", model=1)
    from kinetix.models._builder import convert_state_dict, load_state_dict_strict

    load_state_dict_strict(ours, convert_state_dict(ours, sd))
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.eval()(x), hf(pixel_values=x.transpose(1, 2)).logits, atol=1e-4, rtol=1e-4
        )
