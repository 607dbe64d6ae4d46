"""``init_from_image_vit``: a small standalone image ViT (written here, timm key names) is the reference;
the video models initialised from it must reproduce its token features frame by frame."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from kinetix.errors import CheckpointError
from kinetix.models import create_model, init_from_image_vit

D, HEADS, DEPTH = 32, 2, 2


class RefViT(nn.Module):
    """Plain pre-norm ViT on one image: explicit softmax attention, exact GELU, LayerNorm eps 1e-6."""

    def __init__(self, img=32, patch=8, cls=True, act=nn.GELU):
        super().__init__()
        n = (img // patch) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, D, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.5) if cls else None
        self.pos_embed = nn.Parameter(torch.randn(1, int(cls) + n, D) * 0.5)
        self.blocks = nn.ModuleList()
        for _ in range(DEPTH):
            b = nn.Module()
            b.norm1, b.norm2 = nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, eps=1e-6)
            b.attn = nn.Module()
            b.attn.qkv, b.attn.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
            b.mlp = nn.Module()
            b.mlp.fc1, b.mlp.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.act = act()
        with torch.no_grad():
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.2)

    def forward(self, img):  # (B, 3, H, W) -> (B, P + N, D)
        x = self.patch_embed.proj(img).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        x = x + self.pos_embed
        hd = D // HEADS
        for b in self.blocks:
            q, k, v = b.attn.qkv(b.norm1(x)).chunk(3, -1)
            heads = []
            for h in range(HEADS):
                s = slice(h * hd, (h + 1) * hd)
                a = (q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hd)).softmax(-1)
                heads.append(a @ v[..., s])
            x = x + b.attn.proj(torch.cat(heads, -1))
            x = x + b.mlp.fc2(self.act(b.mlp.fc1(b.norm2(x))))
        return self.norm(x)


def _frames(clip):  # (B, 3, T, H, W) -> list of (B, 3, H, W)
    return list(clip.unbind(2))


def _vivit(model, **kw):  # tiny ViViT with the reference's sizes and exact GELU
    kw = {"embed_dim": D, "num_heads": HEADS, "depth": DEPTH, "act_layer": nn.GELU, **kw}
    return create_model("test_vivit", model=model, **kw)


@pytest.mark.parametrize("tubelet_init", ["central", "inflate"])
def test_model1_on_identical_frames_reproduces_image_tokens(tubelet_init):
    ref = RefViT(cls=False).eval()  # pooled (GAP) ViViT Model 1: no CLS
    m = init_from_image_vit(
        _vivit(1, class_token=False, num_frames=8), ref.state_dict(), tubelet_init=tubelet_init
    )
    img = torch.randn(2, 3, 32, 32)
    clip = img.unsqueeze(2).repeat(1, 1, 8, 1, 1)
    with torch.no_grad():
        tokens = m.eval().forward_features(clip).view(2, 4, 16, D)  # (B, t, hw, D), t-major
        want = ref(img)
    assert (tokens - want[:, None]).abs().max() <= 1e-5


def test_model1_with_cls_single_time_index_reproduces_image_tokens():
    # With a CLS token and t > 1 time indices, each patch key appears t times but the CLS key once,
    # so the softmax weights differ from the image model's: exact equality only holds for t == 1.
    ref = RefViT(cls=True).eval()
    m = init_from_image_vit(_vivit(1, num_frames=2), ref.state_dict())
    img = torch.randn(2, 3, 32, 32)
    clip = torch.stack([torch.randn_like(img), img], 2)  # central frame (index 1) carries the image
    with torch.no_grad():
        assert (m.eval().forward_features(clip) - ref(img)).abs().max() <= 1e-5


def test_zero_temporal_model3_reproduces_image_tokens_per_time_index():
    ref = RefViT(cls=False).eval()
    m = init_from_image_vit(_vivit(3, num_frames=8), ref.state_dict())
    assert all((b.temporal_attn.proj.weight == 0).all() for b in m.blocks)
    clip = torch.randn(2, 3, 8, 32, 32)  # different frames: temporal attention is an identity
    with torch.no_grad():
        tokens = m.eval().forward_features(clip).view(2, 4, 16, D)
        for i in range(4):  # central-frame tubelet init: time index i sees frame 2i + 1
            assert (tokens[:, i] - ref(clip[:, :, 2 * i + 1])).abs().max() <= 1e-5
    copied = init_from_image_vit(_vivit(3, num_frames=8), ref.state_dict(), temporal_init="copy")
    blk = copied.blocks[0]
    assert torch.equal(blk.temporal_attn.qkv.weight, blk.attn.qkv.weight)
    assert torch.equal(blk.temporal_attn.proj.weight, blk.attn.proj.weight)


def test_timesformer_copies_spatial_attention_and_zeroes_temporal_fc():
    ref = RefViT(cls=True, act=nn.GELU).eval()
    for attention in ("divided", "axial", "local_global"):
        m = create_model("test_timesformer", attention=attention, mlp_ratio=4.0)
        init_from_image_vit(m, ref.state_dict())
        blk = m.blocks[1]
        extra = [n.removesuffix("attn") for n, _ in blk.named_children() if n.endswith("_attn")]
        assert extra
        for s in extra:
            assert torch.equal(getattr(blk, f"{s}attn").qkv.weight, blk.attn.qkv.weight)
            assert getattr(blk, f"{s}fc").weight.abs().sum() == 0
    m = init_from_image_vit(create_model("test_timesformer", mlp_ratio=4.0), ref.state_dict()).eval()
    img = torch.randn(2, 3, 32, 32)
    clip = img.unsqueeze(2).repeat(1, 1, 4, 1, 1)
    with torch.no_grad():  # identical frames, zero time embedding: every frame sees the image model
        tokens = m.forward_features(clip)  # (B, 1 + hw*T, D), space-major
        want = ref(img)
        assert (tokens[:, 0] - want[:, 0]).abs().max() <= 1e-5
        assert (tokens[:, 1:].view(2, 16, 4, D) - want[:, 1:, None]).abs().max() <= 1e-5


def test_factorised_encoder_spatial_encoder_from_image():
    ref = RefViT(cls=True).eval()
    m = init_from_image_vit(_vivit(2, num_frames=4), ref.state_dict())
    before = create_model("test_vivit", model=2).temporal_blocks[0].attn.qkv.weight.shape
    assert m.temporal_blocks[0].attn.qkv.weight.shape == before
    torch.testing.assert_close(m.pos_embed, ref.pos_embed)
    torch.testing.assert_close(m.blocks[1].mlp.fc2.weight, ref.blocks[1].mlp.fc2.weight)


def _to_jax(sd):
    """timm-style -> the original JAX ViT layout (big_vision/vit_jax), written from its documented shapes."""
    hd = D // HEADS
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].permute(2, 3, 1, 0), "embedding/bias": sd["patch_embed.proj.bias"],
           "cls": sd["cls_token"], "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"]}  # fmt: skip
    for i in range(DEPTH):
        p = f"Transformer/encoderblock_{i}"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[f"{p}/{theirs}/scale"], out[f"{p}/{theirs}/bias"] = (
                sd[f"blocks.{i}.{ours}.weight"],
                sd[f"blocks.{i}.{ours}.bias"],
            )
        w, b = sd[f"blocks.{i}.attn.qkv.weight"].chunk(3), sd[f"blocks.{i}.attn.qkv.bias"].chunk(3)
        for j, n in enumerate(("query", "key", "value")):
            out[f"{p}/MultiHeadDotProductAttention_1/{n}/kernel"] = w[j].T.reshape(D, HEADS, hd)
            out[f"{p}/MultiHeadDotProductAttention_1/{n}/bias"] = b[j].reshape(HEADS, hd)
        out[f"{p}/MultiHeadDotProductAttention_1/out/kernel"] = sd[f"blocks.{i}.attn.proj.weight"].T.reshape(
            HEADS, hd, D
        )
        out[f"{p}/MultiHeadDotProductAttention_1/out/bias"] = sd[f"blocks.{i}.attn.proj.bias"]
        for j, fc in enumerate(("fc1", "fc2")):
            out[f"{p}/MlpBlock_3/Dense_{j}/kernel"] = sd[f"blocks.{i}.mlp.{fc}.weight"].T
            out[f"{p}/MlpBlock_3/Dense_{j}/bias"] = sd[f"blocks.{i}.mlp.{fc}.bias"]
    return {k: v.detach().numpy() for k, v in out.items()}


def test_jax_npz_and_hf_vit_layouts(tmp_path):
    ref = RefViT(cls=True).eval()
    torch.manual_seed(1)  # same random classifier in both models
    want = init_from_image_vit(_vivit(1, num_frames=4), ref.state_dict()).state_dict()
    np.savez(tmp_path / "ViT-B_16.npz", **_to_jax(ref.state_dict()))
    torch.manual_seed(1)
    got = init_from_image_vit(_vivit(1, num_frames=4), tmp_path / "ViT-B_16.npz").state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)

    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * D,
                                 image_size=32, patch_size=8, layer_norm_eps=1e-6)  # fmt: skip
    hf = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    m = init_from_image_vit(_vivit(1, num_frames=2), hf.state_dict()).eval()
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = m.forward_features(torch.stack([img, img], 2))
        assert (got - hf(pixel_values=img).last_hidden_state).abs().max() <= 1e-4


def test_bad_image_weights_are_clear_errors():
    with pytest.raises(CheckpointError, match="not an image ViT"):
        init_from_image_vit(_vivit(1), {"foo": torch.zeros(1)})
    wide = RefViT().state_dict()
    with pytest.raises(CheckpointError, match="width"):
        init_from_image_vit(create_model("test_vivit", embed_dim=64), wide)
    with pytest.raises(CheckpointError, match="fewer"):
        init_from_image_vit(_vivit(1, depth=3), wide)


def test_unknown_jax_layout_is_a_checkpoint_error(tmp_path):
    """A .npz whose block names the vit_jax reader does not know (here a renamed MLP) is refused with
    the file, what was expected and where such files go — not a bare KeyError."""
    jax = _to_jax(RefViT(cls=True).state_dict())
    renamed = {k.replace("MlpBlock_3/Dense_0", "MlpBlock_3/Dense_9"): v for k, v in jax.items()}
    np.savez(tmp_path / "odd.npz", **renamed)
    with pytest.raises(
        CheckpointError, match=r"odd\.npz: not an image ViT this reader knows.*encoderblock_N"
    ):
        init_from_image_vit(_vivit(1, num_frames=4), tmp_path / "odd.npz")
