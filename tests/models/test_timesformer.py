import subprocess
import sys

import pytest
import torch

from kinetix.errors import CheckpointError
from kinetix.models import create_model
from kinetix.models._complexity import model_complexity
from kinetix.utils.state_dict import read_state_dict

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


# Official key layout (facebookresearch/TimeSformer vit.py, checkpoint.py), written out here by hand.
def _official_keys(depth: int) -> set[str]:
    keys = {"cls_token", "pos_embed", "time_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    keys |= {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    per_block = ["norm1", "attn.qkv", "attn.proj", "temporal_norm1", "temporal_attn.qkv", "temporal_attn.proj",
                 "temporal_fc", "norm2", "mlp.fc1", "mlp.fc2"]  # fmt: skip
    for i in range(depth):
        keys |= {f"blocks.{i}.{m}.{p}" for m in per_block for p in ("weight", "bias")}
    return {f"model.{k}" for k in keys}


def test_official_pyth_layout_converts(tmp_path):
    src = create_model("test_timesformer", num_frames=8).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.2)
    official = {f"model.{k}": v for k, v in src.state_dict().items()}
    assert set(official) == _official_keys(2)
    path = tmp_path / "TimeSformer_divST_8x32_224.pyth"
    torch.save({"epoch": 15, "model_state": official, "optimizer_state": {}, "cfg": "..."}, path)
    same = create_model("test_timesformer", num_frames=8, checkpoint=str(path)).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    torch.testing.assert_close(same(x), src(x))
    # into a 4-frame model: time_embed resized by nearest interpolation like the official code
    fewer = create_model("test_timesformer", num_frames=4, checkpoint=str(path))
    torch.testing.assert_close(fewer.time_embed[0], src.time_embed[0, ::2])
    # a wrong architecture is a clear error
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("test_timesformer", attention="joint", checkpoint=str(path))


def test_kinetix_convert_cli(tmp_path):
    src = create_model("test_timesformer")
    torch.save({"model_state": {f"model.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "a.pyth")
    out = tmp_path / "a.safetensors"
    cmd = [sys.executable, "-m", "kinetix", "convert", "--model", "test_timesformer",
           "--src", str(tmp_path / "a.pyth"), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    sd = read_state_dict(out)
    assert all(torch.equal(sd[k], v) for k, v in src.state_dict().items())


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
