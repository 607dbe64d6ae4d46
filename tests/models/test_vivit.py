import numpy as np
import pytest
import torch

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
        with pytest.raises(ValueError, match="no CLS"):
            create_model("test_vivit", model=model, class_token=True)
    m3 = create_model("test_vivit", model=3)
    assert all((b.temporal_attn.proj.weight == 0).all() for b in m3.blocks)
    assert create_model("test_vivit", model=4).blocks[0].num_time_heads == 1


def test_model3_order_is_configurable():
    x = torch.randn(1, 3, 4, 32, 32)
    st = create_model("test_vivit", model=3).eval()
    with torch.no_grad():
        for b in st.blocks:
            b.temporal_attn.proj.weight.normal_(0, 0.3)
    ts = create_model("test_vivit", model=3, order=("time", "space")).eval()
    ts.load_state_dict(st.state_dict())
    assert not torch.allclose(st(x), ts(x), atol=1e-4)


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


# ---- scenic checkpoints: a flax params tree written out by hand from the documented layout ------------
def _flax_block(prefix, blk, D, H, names):
    ln, attn, mlp, ln2 = names
    out = {}
    hd = D // H
    for ours, theirs in ((blk.norm1, ln), (blk.norm2, ln2)):
        out[f"{prefix}/{theirs}/scale"], out[f"{prefix}/{theirs}/bias"] = ours.weight, ours.bias
    w, b = blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)
    for j, n in enumerate(("query", "key", "value")):
        out[f"{prefix}/{attn}/{n}/kernel"] = w[j].T.reshape(D, H, hd)
        out[f"{prefix}/{attn}/{n}/bias"] = b[j].reshape(H, hd)
    out[f"{prefix}/{attn}/out/kernel"] = blk.attn.proj.weight.T.reshape(H, hd, D)
    out[f"{prefix}/{attn}/out/bias"] = blk.attn.proj.bias
    for j, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
        out[f"{prefix}/{mlp}/Dense_{j}/kernel"], out[f"{prefix}/{mlp}/Dense_{j}/bias"] = fc.weight.T, fc.bias
    return out


def _flax_tree(m):
    D, H = m.embed_dim, m.blocks[0].attn.num_heads
    names = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
    tree = {"embedding/kernel": m.patch_embed.proj.weight.permute(2, 3, 4, 1, 0),  # (t, h, w, c, D)
            "embedding/bias": m.patch_embed.proj.bias,
            "output_projection/kernel": m.head.weight.T, "output_projection/bias": m.head.bias}  # fmt: skip
    encoders = [("Transformer" if m.model == 1 else "SpatialTransformer", m.blocks, m.norm, m.pos_embed)]
    if m.model == 2:
        encoders.append(("TemporalTransformer", m.temporal_blocks, m.temporal_norm, m.temporal_pos_embed))
        tree["cls_SpatialTransformer"], tree["cls_TemporalTransformer"] = m.cls_token, m.temporal_cls_token
    else:
        tree["cls"] = m.cls_token
    for enc, blocks, norm, pos in encoders:
        tree[f"{enc}/posembed_input/pos_embedding"] = pos
        tree[f"{enc}/encoder_norm/scale"], tree[f"{enc}/encoder_norm/bias"] = norm.weight, norm.bias
        for i, blk in enumerate(blocks):
            tree |= _flax_block(f"{enc}/encoderblock_{i}", blk, D, H, names)
    return {f"optimizer/target/{k}": v.detach().numpy() for k, v in tree.items()}


@pytest.mark.parametrize("model", [1, 2])
def test_scenic_npz_converts(model, tmp_path):
    src = create_model("test_vivit", model=model).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.2)
    np.savez(tmp_path / "scenic.npz", **_flax_tree(src))
    ours = create_model("test_vivit", model=model, checkpoint=str(tmp_path / "scenic.npz")).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    torch.testing.assert_close(ours(x), src(x), atol=1e-5, rtol=1e-5)


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
