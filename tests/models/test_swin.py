"""Swin (2D, per frame) and SIFA-Transformer: window attention vs an explicit softmax reference of the
official code, the SIFA/temporal-conv terms vs the released formulas, identity at initialisation
(= the image Swin on every tubelet's central frame), image-weight initialisation, the released and
timm checkpoint layouts, other clip sizes, and params/GMACs against the Swin paper."""

import pytest
import torch
import torch.nn.functional as F

from kinetix.errors import CheckpointError
from kinetix.layers.attention import Attention
from kinetix.layers.temporal import inter_frame_attention
from kinetix.models import create_model
from kinetix.models._complexity import model_complexity
from kinetix.models.swin import (
    InterFrameResidual,
    SwinBlock,
    SwinTransformer,
    TemporalConv,
    init_from_image_swin,
    local_inter_frame_attention,
    relative_position_index,
)

TINY = dict(
    img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, num_classes=5
)


# ---- window attention vs the official explicit computation ------------------------------------------
def _official_mask(h, w, ws, s):
    """The official Swin region mask: slice loop over the shifted image, window partition, -100."""
    img = torch.zeros(h, w)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[hs, wsl] = cnt
            cnt += 1
    win = img.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    m = win[:, None, :] - win[:, :, None]
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)  # (nW, N, N)


def _reference_block(blk: SwinBlock, x, h, w):
    """Official SwinTransformerBlock.forward: roll, partition, q*scale @ k^T + bias (+ mask), softmax."""
    B, L, C = x.shape
    ws, s, a = blk.window_size, blk.shift_size, blk.attn
    heads, hd = a.num_heads, C // a.num_heads
    y = blk.norm1(x).view(B, h, w, C)
    if s:
        y = torch.roll(y, (-s, -s), (1, 2))
    win = y.view(B, h // ws, ws, w // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
    n = ws * ws
    qkv = a.qkv(win).reshape(-1, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    # relative position bias from an explicit double loop over token pairs
    bias = torch.empty(heads, n, n)
    for i in range(n):
        for j in range(n):
            dy, dx = i // ws - j // ws, i % ws - j % ws
            bias[:, i, j] = a.relative_position_bias_table[(dy + ws - 1) * (2 * ws - 1) + dx + ws - 1]
    attn = attn + bias
    if s:
        mask = _official_mask(h, w, ws, s)
        nw = mask.shape[0]
        attn = (attn.view(-1, nw, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, C)
    out = a.proj(out).view(B, h // ws, w // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, h, w, C)
    if s:
        out = torch.roll(out, (s, s), (1, 2))
    x = x + out.reshape(B, L, C)
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize(("h", "w", "ws", "shift"), [(8, 8, 4, 0), (8, 8, 4, 2), (8, 12, 4, 2), (6, 9, 3, 1)])
def test_window_attention_matches_explicit_softmax(h, w, ws, shift):
    blk = SwinBlock(12, 3, ws, shift).eval()
    assert isinstance(blk.attn, Attention)  # the one shared attention
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_()
        x = torch.randn(2, h * w, 12)
        out = blk(x, (1, h, w))
        ref = _reference_block(blk, x, h, w)
    assert (out - ref).abs().max() < 1e-5


# ---- temporal terms vs the released formulas -----------------------------------------------------------
def test_local_inter_frame_attention_equals_sifa_op_with_zero_offsets():
    f = torch.randn(2, 4, 5, 6, 7, dtype=torch.double)  # (N, C, T, H, W)
    zero = torch.zeros(2, 18, 5, 6, 7, dtype=torch.double)
    ref = inter_frame_attention(f, zero, 3)  # (N, C, T, H, W), grid_sample path
    out = local_inter_frame_attention(f.permute(0, 2, 3, 4, 1), 3)  # channels-last
    assert torch.allclose(out.permute(0, 4, 1, 2, 3), ref, atol=1e-12)
    assert ref[:, :, :-1].abs().amax() > 0.1 and ref[:, :, -1].abs().amax() == 0


def test_inter_frame_residual_is_released_forward_rtc():
    m = InterFrameResidual(8).double()
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    n, t, h, w = 2, 3, 4, 5
    x = torch.randn(n * t, h * w, 8, dtype=torch.double)
    # released: NCTHW view, agg shifted to t <- t+1, last frame masked to 0, tda_norm, (residual outside)
    f = x.transpose(1, 2).reshape(n, t, 8, h, w).transpose(1, 2)
    agg = inter_frame_attention(f, torch.zeros(n, 18, t, h, w, dtype=torch.double))
    ref = m.norm(agg.transpose(1, 2).reshape(n * t, 8, h * w).transpose(1, 2))
    assert torch.allclose(m(x, (t, h, w)), ref, atol=1e-12)
    assert torch.allclose(ref.view(n, t, h * w, 8)[:, -1], m.norm.bias.expand(n, h * w, 8))  # last: bias


def test_temporal_conv_is_released_forward_vtc():
    m = TemporalConv(6).double()
    with torch.no_grad():
        m.conv.weight.normal_()
    n, t, L = 2, 5, 7
    x = torch.randn(n * t, L, 6, dtype=torch.double)
    y = x.view(n, t, L, 6).transpose(1, 3)  # (n, C, L, T)
    ref = F.conv2d(y, m.conv.weight, padding=(0, 1)).transpose(1, 3).reshape(n * t, L, 6)
    assert torch.allclose(m(x, (t, 1, L)), ref, atol=1e-12)


# ---- structure, identity at init, image initialisation --------------------------------------------------
def test_sifa_block_pattern_as_released():
    with torch.device("meta"):
        m = create_model("sifa_swin_b")
    kinds = [[type(b.temporal).__name__ for b in stage.blocks] for stage in m.layers]
    assert kinds[0] == kinds[1] == ["InterFrameResidual", "TemporalConv"]
    assert kinds[2] == ["InterFrameResidual", "TemporalConv"] * 9
    assert kinds[3] == ["InterFrameResidual"] * 2  # stage 4: 7x7 tokens = one window, no shift
    assert [b.shift_size for b in m.layers[3].blocks] == [0, 0]
    assert (
        m.patch_embed.proj.weight.shape == (128, 3, 4, 4, 4)
        and "patch_embed.norm.weight" not in m.state_dict()
    )


@pytest.mark.parametrize(("frames", "size"), [(8, 64), (12, 128)])
def test_sifa_at_init_equals_image_swin_on_central_frames(frames, size):
    image = SwinTransformer(**TINY, patch_norm=False).eval()
    sifa = SwinTransformer(**TINY, tubelet_size=4, patch_norm=False, sifa=True, num_frames=8).eval()
    init_from_image_swin(sifa, image.state_dict())
    x = torch.randn(2, 3, frames, size, size)
    with torch.no_grad():
        ref = image.forward_features(x[:, :, 2::4])  # central frame (index 2 of 4) of each tubelet
        out = sifa.forward_features(x)
        assert out.shape == (2, frames // 4, 128)
        assert (out - ref).abs().max() < 1e-4
        assert (sifa(x) - image(x[:, :, 2::4])).abs().max() < 1e-4
        for m in sifa.modules():  # the temporal terms matter once they are not zero
            if isinstance(m, InterFrameResidual):
                m.norm.weight.fill_(1.0)
        assert (sifa.forward_features(x) - ref).abs().max() > 1e-2


def _official_image_sd(model: SwinTransformer) -> dict:
    """kinetix 2D Swin -> the official Swin checkpoint layout (``{'model': ...}``, buffers included)."""
    sd = dict(model.state_dict())
    for name, m in model.named_modules():
        if isinstance(m, SwinBlock):
            sd[f"{name}.attn.relative_position_index"] = relative_position_index(m.window_size, "cpu").view(
                m.window_size**2, -1
            )
            if m.shift_size:
                sd[f"{name}.attn_mask"] = torch.zeros(4, m.window_size**2, m.window_size**2)
    return {"model": sd}


def test_init_from_image_file_official_layout(tmp_path):
    image = SwinTransformer(**TINY).eval()  # with the patch norm, as ImageNet Swin
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(_official_image_sd(image), path)
    sifa = create_model("test_sifa_swin", patch_norm=True)  # option: keep the image patch norm
    init_from_image_swin(sifa, path)
    own, img = sifa.state_dict(), image.state_dict()
    for k, v in own.items():
        if ".temporal." in k:
            assert v.abs().max() == 0, k  # untouched zero init
        elif k == "patch_embed.proj.weight":
            assert torch.equal(v[:, :, 2], img[k]) and v[:, :, [0, 1, 3]].abs().max() == 0
        else:
            assert torch.equal(v, img[k]), k
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert (sifa.eval()(x) - image(x[:, :, 2::4])).abs().max() < 1e-4
    # released structure (no patch norm): the image patch norm is dropped, loading via create_model works
    released = create_model("test_sifa_swin", checkpoint=str(path))
    assert torch.equal(released.layers[2].blocks[1].mlp.fc1.weight, img["layers.2.blocks.1.mlp.fc1.weight"])


def test_init_from_image_rejects_wrong_weights():
    image = SwinTransformer(**TINY)
    sifa = create_model("test_sifa_swin")
    sd = dict(image.state_dict())
    del sd["layers.1.blocks.0.mlp.fc1.weight"]
    with pytest.raises(
        CheckpointError, match=r"missing \(not temporal\): layers\.1\.blocks\.0\.mlp\.fc1\.weight"
    ):
        init_from_image_swin(sifa, sd)
    wide = SwinTransformer(**{**TINY, "embed_dim": 24})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        init_from_image_swin(sifa, wide.state_dict())


# ---- released SIFA-Transformer and timm checkpoint layouts ---------------------------------------------
def _released_sifa_sd(model: SwinTransformer, frames: int) -> dict:
    """A checkpoint as the released training code writes it, built from the official structure."""
    own = model.state_dict()
    sd = {
        "patch_embed.proj.weight": own["patch_embed.proj.weight"],
        "patch_embed.proj.bias": own["patch_embed.proj.bias"],
    }
    for i, stage in enumerate(model.layers):
        dim = stage.blocks[0].norm1.weight.shape[0]
        for j, blk in enumerate(stage.blocks):
            p = f"layers.{i}.blocks.{j}."
            for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                for kind in ("weight", "bias"):
                    sd[p + f"{part}.{kind}"] = own[p + f"{part}.{kind}"]
            sd[p + "attn.relative_position_bias_table"] = own[p + "attn.relative_position_bias_table"]
            sd[p + "attn.relative_position_index"] = relative_position_index(blk.window_size, "cpu").view(
                blk.window_size**2, -1
            )
            sd[p + "def_cor.weight"] = torch.full((dim, frames // 4, 3, 3), 1.0 / dim)  # DefCorFixW
            if blk.shift_size:  # released blocks hold both terms; the unused one keeps its zero init
                sd[p + "attn_mask"] = torch.zeros(1)
                sd[p + "conv.weight"] = own[p + "temporal.conv.weight"]
                sd[p + "tda_norm.weight"], sd[p + "tda_norm.bias"] = torch.zeros(dim), torch.zeros(dim)
            else:
                sd[p + "conv.weight"] = torch.zeros(dim, dim, 1, 3)
                sd[p + "tda_norm.weight"] = own[p + "temporal.norm.weight"]
                sd[p + "tda_norm.bias"] = own[p + "temporal.norm.bias"]
        if stage.downsample is not None:
            for k in ("reduction.weight", "norm.weight", "norm.bias"):
                sd[f"layers.{i}.downsample.{k}"] = own[f"layers.{i}.downsample.{k}"]
    sd.update({"norm.weight": own["norm.weight"], "norm.bias": own["norm.bias"]})
    sd.update({"fc.weight": own["head.weight"], "fc.bias": own["head.bias"]})
    return {f"module.{k}": v.clone() for k, v in sd.items()}


def test_released_sifa_checkpoint_converts_strictly(tmp_path):
    src = create_model("test_sifa_swin").eval()
    with torch.no_grad():
        for n, p in src.named_parameters():
            if ".temporal." in n:
                p.normal_(0, 0.1)  # a trained model: the temporal terms are not zero
    path = tmp_path / "sifa_swin.pth"
    torch.save({"model": _released_sifa_sd(src, 8), "epoch": 3}, path)
    model = create_model("test_sifa_swin", checkpoint=str(path)).eval()  # strict load inside
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    bad = _released_sifa_sd(src, 8)
    bad["module.layers.0.blocks.0.def_cor.weight"] += 1.0
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="fixed 1/C"):
        create_model("test_sifa_swin", checkpoint=str(path))
    with pytest.raises(CheckpointError, match="unexpected keys"):  # SIFA weights into a plain Swin
        torch.save(_released_sifa_sd(src, 8), path)
        create_model("test_swin", checkpoint=str(path))


def test_timm_layout_converts(tmp_path):
    src = create_model("test_swin").eval()
    sd = {}
    for k, v in src.state_dict().items():  # timm >= 0.9: merging opens stages 2-4, head.fc
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.", f"layers.{i + 1}.", 1)
        sd[k.replace("head.", "head.fc.")] = v
    path = tmp_path / "timm_swin.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(path))
    model = create_model("test_swin", checkpoint=str(path)).eval()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


# ---- clip sizes, API, training ----------------------------------------------------------------------------
def test_image_and_clip_inputs_and_bad_sizes():
    m = create_model("test_swin").eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(img), m(img.unsqueeze(2)))  # an image is a one-frame clip
        clip = torch.randn(1, 3, 3, 128, 192)  # other T, non-square size (multiples of 64)
        per_frame = torch.stack([m(clip[:, :, t]) for t in range(3)], 1).mean(1)
        assert (m(clip) - per_frame).abs().max() < 1e-5  # TSN-style logit average
    assert m.input_multiple() == 64
    with pytest.raises(ValueError, match="multiple of 64"):
        m(torch.randn(1, 3, 2, 96, 64))
    with pytest.raises(ValueError, match="4-frame tubelets"):
        create_model("test_sifa_swin")(torch.randn(1, 3, 6, 64, 64))


def test_api_gradients_and_bf16():
    m = create_model("test_sifa_swin", num_classes=7)
    assert m.pretrained_cfg.num_classes == 7 and m.get_classifier().out_features == 7
    nwd = m.no_weight_decay()
    assert (
        "layers.0.blocks.0.attn.relative_position_bias_table" in nwd
        and "layers.0.blocks.0.norm1.weight" in nwd
    )
    assert (
        "layers.0.blocks.0.attn.qkv.weight" not in nwd and "layers.0.blocks.1.temporal.conv.weight" not in nwd
    )
    m.train()
    m(torch.randn(2, 3, 8, 64, 64)).sum().backward()  # zero-init terms still get gradients
    assert m.layers[0].blocks[0].temporal.norm.weight.grad.abs().max() > 0
    assert m.layers[0].blocks[1].temporal.conv.weight.grad.abs().max() > 0
    m.reset_classifier(3)
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(torch.randn(1, 3, 4, 64, 64)).shape == (1, 3)


# ---- complexity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "mparams", "gmacs"), [("swin_t", 28.3, 4.5), ("swin_s", 49.6, 8.7), ("swin_b", 87.8, 15.4)]
)
def test_swin_params_and_gmacs_match_paper(name, mparams, gmacs):
    r = model_complexity(name, num_frames=1, num_classes=1000)  # ImageNet 2D model, 224, meta device
    assert abs(r.mparams - mparams) / mparams < 0.02, r.mparams
    assert abs(r.gmacs - gmacs) / gmacs < 0.02, r.gmacs
