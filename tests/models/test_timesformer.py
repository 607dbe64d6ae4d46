import subprocess
import sys

import pytest
import torch

from kinetix.errors import CheckpointError
from kinetix.models import create_model
from kinetix.models._complexity import model_complexity

# Paper: Table 1 params; Sec. 4 / README: 0.59 TFLOPs for 3 views of 8x224 (196 GMACs per view);
# TimeSformer-HR 5109 GFLOPs for 3 views, TimeSformer-L 7140 GFLOPs for 3 views (per view: /3).
PAPER = [
    ("timesformer_base", 121.4, 196.0),
    ("timesformer_base_joint", 85.9, None),
    ("timesformer_base_space_only", 85.9, None),
    ("timesformer_base_local_global", 121.4, None),
    ("timesformer_base_axial", 156.8, None),
    ("timesformer_base_hr", 121.4, 5109 / 3),
    ("timesformer_large", 121.4, 7140 / 3),
]


@pytest.mark.parametrize(("name", "mparams", "gmacs"), PAPER)
def test_params_and_gmacs_match_paper(name, mparams, gmacs):
    r = model_complexity(name)  # meta device: no compute
    assert abs(r.mparams - mparams) / mparams < 0.01, r.mparams
    if gmacs is not None:
        assert abs(r.gmacs - gmacs) / gmacs < 0.01, r.gmacs


def test_divided_costs_less_than_joint_as_frames_grow():
    div = [model_complexity("timesformer_base", num_frames=t).gmacs for t in (8, 32)]
    joint = [model_complexity("timesformer_base_joint", num_frames=t).gmacs for t in (8, 32)]
    assert div[1] < joint[1] and (joint[1] / joint[0]) > (div[1] / div[0])


@pytest.mark.parametrize("attention", ["divided", "joint", "space", "local_global", "axial"])
def test_other_clip_sizes_and_api(attention):
    m = create_model("test_timesformer", attention=attention).eval()
    assert m(torch.randn(2, 3, 4, 32, 32)).shape == (2, 5)
    y = m(torch.randn(1, 3, 6, 48, 40))  # more frames and another resolution: embeddings resized
    assert y.shape == (1, 5) and torch.isfinite(y).all()
    assert m.no_weight_decay() >= {"pos_embed", "cls_token"}
    m.reset_classifier(7)
    assert m.get_classifier().out_features == 7


def test_space_only_ignores_frame_order_and_divided_does_not():
    x = torch.randn(1, 3, 4, 32, 32)
    perm = x[:, :, [2, 0, 3, 1]]
    so = create_model("test_timesformer", attention="space").eval()
    torch.testing.assert_close(so(x), so(perm), atol=1e-5, rtol=1e-5)
    div = create_model("test_timesformer").eval()
    with torch.no_grad():
        div.time_embed.normal_()
    assert not torch.allclose(div(x), div(perm), atol=1e-4)


def test_temporal_fc_zero_at_init_makes_divided_equal_space_only_per_frame_when_t_is_one():
    div = create_model("test_timesformer", num_frames=1).eval()
    so = create_model("test_timesformer", attention="space", num_frames=1).eval()
    so.load_state_dict({k: v for k, v in div.state_dict().items() if k in so.state_dict()})
    assert all((b.temporal_fc.weight == 0).all() for b in div.blocks)
    x = torch.randn(2, 3, 1, 32, 32)
    torch.testing.assert_close(div(x), so(x), atol=1e-5, rtol=1e-5)


# ---- official .pyth checkpoints -----------------------------------------------------------------
# facebookresearch/TimeSformer: ``timesformer/models/vit.py`` (VisionTransformer wrapped as ``self.model``
# by the registry class, hence the ``model.`` prefix) and ``timesformer/utils/checkpoint.py`` (a .pyth
# file is ``{"epoch", "model_state", "optimizer_state", "cfg"}``). Names and shapes (D = embed dim,
# N = (img/patch)^2 patches per frame, T frames):
#   model.cls_token (1, 1, D)   model.pos_embed (1, 1 + N, D)   model.time_embed (1, T, D)
#   model.patch_embed.proj.weight (D, 3, p, p), .bias (D,)      (a Conv2d applied per frame)
#   model.blocks.{i}.norm1 / temporal_norm1 / norm2 .weight/.bias (D,)
#   model.blocks.{i}.attn.qkv / temporal_attn.qkv .weight (3D, D), .bias (3D,)  (rows: q, k, v; heads inside)
#   model.blocks.{i}.attn.proj / temporal_attn.proj / temporal_fc .weight (D, D), .bias (D,)
#   model.blocks.{i}.mlp.fc1 .weight (4D, D), .bias (4D,); mlp.fc2 .weight (D, 4D), .bias (D,)
#   model.norm .weight/.bias (D,)   model.head .weight (classes, D), .bias (classes,)
def _official_state(D=32, depth=2, T=8, N=16, p=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.2, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    sd = {"model.cls_token": r(1, 1, D), "model.pos_embed": r(1, 1 + N, D), "model.time_embed": r(1, T, D),
          "model.patch_embed.proj.weight": r(D, 3, p, p, std=0.05), "model.patch_embed.proj.bias": r(D),
          "model.norm.weight": r(D, mean=1.0), "model.norm.bias": r(D),
          "model.head.weight": r(classes, D), "model.head.bias": r(classes)}  # fmt: skip
    for i in range(depth):
        b = f"model.blocks.{i}."
        for n in ("norm1", "temporal_norm1", "norm2"):
            sd[b + n + ".weight"], sd[b + n + ".bias"] = r(D, mean=1.0), r(D)
        for n in ("attn", "temporal_attn"):
            sd[b + n + ".qkv.weight"], sd[b + n + ".qkv.bias"] = r(3 * D, D), r(3 * D)
            sd[b + n + ".proj.weight"], sd[b + n + ".proj.bias"] = r(D, D), r(D)
        sd[b + "temporal_fc.weight"], sd[b + "temporal_fc.bias"] = r(D, D), r(D)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(4 * D, D), r(4 * D)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(D, 4 * D), r(D)
    return sd


def _official_forward(sd, x, heads=2, patch=8):
    """The official divided space-time forward (``vit.py``: ``forward_features`` + ``Block.forward``),
    written from the checkpoint names above; independent of kinetix's modules."""
    F = torch.nn.functional
    m = {k.removeprefix("model."): v for k, v in sd.items()}
    B, _, T, _, _ = x.shape
    D = m["cls_token"].shape[-1]

    def ln(z, n):
        return F.layer_norm(z, (D,), m[n + ".weight"], m[n + ".bias"], eps=1e-6)

    def lin(z, n):
        return z @ m[n + ".weight"].T + m[n + ".bias"]

    def attn(z, n):  # qkv.reshape(B, N, 3, heads, D // heads), softmax(q k^T * hd^-0.5) v, proj
        L = z.shape[1]
        q, k, v = lin(z, n + ".qkv").view(-1, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-1, -2) * (D // heads) ** -0.5).softmax(-1)
        return lin((a @ v).transpose(1, 2).reshape(-1, L, D), n + ".proj")

    z = x.transpose(1, 2).reshape(B * T, 3, *x.shape[-2:])  # 'b c t h w -> (b t) c h w'
    z = F.conv2d(z, m["patch_embed.proj.weight"], m["patch_embed.proj.bias"], stride=patch)
    H, W = z.shape[-2:]
    z = z.flatten(2).transpose(1, 2)  # (b t) (h w) m
    z = torch.cat([m["cls_token"].expand(B * T, -1, -1), z], 1) + m["pos_embed"]
    cls = z[:B, :1]  # x[:B, 0]: every frame's CLS is the same
    z = z[:, 1:].reshape(B, T, H * W, D).transpose(1, 2).reshape(B * H * W, T, D)  # '(b t) n m -> (b n) t m'
    z = z + m["time_embed"]
    z = torch.cat([cls, z.reshape(B, H * W * T, D)], 1)  # '(b n) t m -> b (n t) m'
    for i in range(len({k.split(".")[1] for k in m if k.startswith("blocks.")})):
        b = f"blocks.{i}."
        xt = z[:, 1:].reshape(B * H * W, T, D)  # 'b (h w t) m -> (b h w) t m'
        res_t = attn(ln(xt, b + "temporal_norm1"), b + "temporal_attn").reshape(B, H * W * T, D)
        xt = z[:, 1:] + lin(res_t, b + "temporal_fc")
        init_cls = z[:, :1]
        xs = xt.reshape(B, H * W, T, D).transpose(1, 2).reshape(B * T, H * W, D)  # '(b t) (h w) m'
        xs = torch.cat([init_cls.repeat(1, T, 1).reshape(B * T, 1, D), xs], 1)
        res_s = attn(ln(xs, b + "norm1"), b + "attn")
        cls_res = res_s[:, 0].reshape(B, T, D).mean(1, keepdim=True)
        res_s = res_s[:, 1:].reshape(B, T, H * W, D).transpose(1, 2).reshape(B, H * W * T, D)  # 'b (h w t) m'
        z = torch.cat([init_cls, xt], 1) + torch.cat([cls_res, res_s], 1)
        z = z + lin(F.gelu(lin(ln(z, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
    return lin(ln(z, "norm")[:, 0], "head")


def test_official_pyth_layout_converts(tmp_path):
    official = _official_state(T=8)
    path = tmp_path / "TimeSformer_divST_8x32_224.pyth"
    torch.save({"epoch": 15, "model_state": official, "optimizer_state": {}, "cfg": "..."}, path)
    ours = create_model("test_timesformer", num_frames=8, checkpoint=str(path)).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _official_forward(official, x), atol=1e-4, rtol=1e-4)
    # into a 4-frame model: time_embed resized by nearest interpolation like the official code
    fewer = create_model("test_timesformer", num_frames=4, checkpoint=str(path))
    torch.testing.assert_close(fewer.time_embed[0], official["model.time_embed"][0, ::2])
    # a wrong architecture is a clear error
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("test_timesformer", attention="joint", checkpoint=str(path))


def test_kinetix_convert_cli(tmp_path):
    official = _official_state(T=4)
    torch.save({"model_state": official}, tmp_path / "a.pyth")
    out = tmp_path / "a.safetensors"
    cmd = [sys.executable, "-m", "kinetix", "convert", "--model", "test_timesformer",
           "--src", str(tmp_path / "a.pyth"), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    m = create_model("test_timesformer", checkpoint=str(out)).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _official_forward(official, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["divided", "joint"])
def test_bf16_autocast_inference_close_to_fp32(attention):
    m = create_model("test_timesformer", attention=attention).eval()
    with torch.no_grad():
        m.head.weight.normal_()  # non-trivial logits
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.inference_mode():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
