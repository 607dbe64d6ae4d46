"""Checkpoint converters of the 2D-CNN family on synthetic state dicts with the official key names
and shapes: after conversion the model loads strictly and gives the same output as the model the
tensors came from. Full-size key/shape coverage is checked on the meta device."""

import re

import pytest
import torch

from kinetix.cli.main import main as cli_main
from kinetix.errors import CheckpointError
from kinetix.layers.temporal import TemporalShift
from kinetix.models import create_model, load_checkpoint
from kinetix.models._builder import convert_state_dict, load_state_dict_strict
from kinetix.models.resnet import BasicBlock, ResNet
from kinetix.utils.state_dict import read_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _assert_same_model(dst, src, x):
    torch.testing.assert_close(dst(x), src(x))
    y, y2 = src(x), src(torch.randn_like(x) * x.std())
    assert (y - y2).abs().max() > 1e-2 * y.abs().max()  # the comparison is not trivial


def _official_tsm(model):
    """kinetix -> official TSM/TSN layout (DataParallel ``module.``, ``base_model``, ``.net``, ``new_fc``)."""
    shifted = {n.removeprefix("backbone.").removesuffix(".temporal_in") for n, m in model.named_modules()
               if isinstance(m, TemporalShift)}  # fmt: skip
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            out["module.new_fc." + k[3:]] = v
            continue
        k = k.removeprefix("backbone.")
        blk = re.match(r"(layer\d\.\d+)\.conv1\.", k)
        if blk and blk.group(1) in shifted:
            k = k.replace(".conv1.", ".conv1.net.")
        out["module.base_model." + k] = v
    return out


def _mmaction2(model):
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            out["cls_head.fc_cls." + k[3:]] = v
            continue
        k = k.removeprefix("backbone.")
        k = re.sub(r"^conv1\.", "conv1.conv.", k)
        k = re.sub(r"^bn1\.", "conv1.bn.", k)
        k = re.sub(r"\.conv(\d)\.", r".conv\1.conv.", k)
        k = re.sub(r"\.bn(\d)\.", r".conv\1.bn.", k)
        k = k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        out["backbone." + k] = v
    for k in [k for k in out if re.match(r"backbone\.layer\d\.\d+\.conv1\.conv\.weight", k)]:
        out[k.replace(".conv.weight", ".conv.net.weight")] = out.pop(k)  # TSM wraps conv1.conv
    return out


def test_official_tsm_keys_full_size_on_meta():
    with torch.device("meta"):
        for name, n_shift in (("tsm_r50", 16), ("tsm_r101", 18), ("tsn_r50", 0)):
            m = create_model(name)
            sd = _official_tsm(m)
            assert sum(".net." in k for k in sd) == n_shift
            assert sd["module.new_fc.weight"].shape == (400, 2048)
            if n_shift:
                assert sd["module.base_model.layer1.0.conv1.net.weight"].shape == (64, 64, 1, 1)
            load_state_dict_strict(m, convert_state_dict(m, sd))
    assert "module.base_model.layer3.1.conv1.weight" in _official_tsm(create_model("tsm_r101", num_classes=2))


def test_official_gsm_bninception_keys_full_size_on_meta():
    with torch.device("meta"):
        m = create_model("gsm_bninception")
        sd = {
            "module.base_model." + k.removeprefix("backbone."): v
            for k, v in m.state_dict().items()
            if k.startswith("backbone.")
        }
        sd.update({"module.new_fc.weight": m.fc.weight, "module.new_fc.bias": m.fc.bias})
        for k, shape in [("gsm_inception_3a_1x1.conv3D.weight", (2, 32, 3, 3, 3)), ("gsm_inception_4d_1x1.bn.running_var", (96,)),
                         ("gsm_inception_3c_3x3_reduce.conv3D.bias", (2,)), ("conv1_7x7_s2.bias", (64,)),
                         ("inception_5b_pool_proj_bn.weight", (128,)), ("inception_4e_double_3x3_1.weight", (256, 192, 3, 3))]:  # fmt: skip
            assert sd["module.base_model." + k].shape == shape
        assert sum(k.endswith("conv3D.weight") for k in sd) == 10
        load_state_dict_strict(m, convert_state_dict(m, sd))


@pytest.mark.parametrize(
    "name,layout", [("test_tsm", _official_tsm), ("test_tsn", _official_tsm), ("test_tsm", _mmaction2)]
)
def test_tsm_converters_reproduce_outputs(randomize, tmp_path, name, layout):
    x = torch.randn(2, 3, 8, 64, 64)
    src = randomize(create_model(name), x)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "arch": "resnet", "state_dict": layout(src), "best_prec1": 1.0}, path)
    dst = load_checkpoint(create_model(name), path).eval()
    _assert_same_model(dst, src, x[:1])


def test_gsm_bninception_converter_reproduces_outputs(randomize, tmp_path):
    x = torch.randn(2, 3, 2, 32, 32) * 50
    src = randomize(create_model("gsm_bninception", num_frames=2), x)
    sd = {
        "module.base_model." + k.removeprefix("backbone."): v
        for k, v in src.state_dict().items()
        if k.startswith("backbone.")
    }
    sd.update({"module.new_fc.weight": src.fc.weight.detach(), "module.new_fc.bias": src.fc.bias.detach()})
    torch.save({"state_dict": sd}, tmp_path / "gsm_bninception.pth")
    dst = load_checkpoint(
        create_model("gsm_bninception", num_frames=2), tmp_path / "gsm_bninception.pth"
    ).eval()
    _assert_same_model(dst, src, x[:1])


def test_torchvision_imagenet_file_into_tsm(randomize, tmp_path):
    image = randomize(
        ResNet(BasicBlock, (1, 1, 1, 1), num_classes=1000, base_width=8), torch.randn(8, 3, 32, 32)
    )
    torch.save(image.state_dict(), tmp_path / "resnet_tiny.pth")
    tsm = load_checkpoint(create_model("test_tsm"), tmp_path / "resnet_tiny.pth")
    tsn = load_checkpoint(create_model("test_tsn"), tmp_path / "resnet_tiny.pth").eval()
    frame = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(tsn.backbone.forward_features(frame), image.forward_features(frame))
    for k, v in image.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(tsm.state_dict()["backbone." + k], v)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(create_model("test_gsm"), tmp_path / "resnet_tiny.pth")  # bottleneck vs basic


def _official_sifa(model):
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("temporal_out.", "")
        if v.dim() == 4:
            v = v.unsqueeze(2)  # released C2D: every conv is a Conv3d (O, I, 1, k, k)
        out["module." + k] = v
    for n, m in model.named_modules():
        if hasattr(m, "conv_offset"):
            c = m.channels
            out[f"module.{n.removesuffix('.temporal_out')}.def_cor.weight"] = torch.full(
                (c, m.num_frames, 3, 3), 1 / c
            )
    return out


def test_sifa_converter_reproduces_outputs(randomize, tmp_path):
    x = torch.randn(2, 3, 8, 64, 64)
    src = randomize(create_model("test_sifa"), x)
    sd = _official_sifa(src)
    assert (
        sd["module.conv1.weight"].shape == (8, 3, 4, 7, 7)
        and sd["module.layer2.1.conv_offset.weight"].dim() == 5
    )
    torch.save({"model": sd, "epoch": 1}, tmp_path / "sifa.pth")
    dst = load_checkpoint(create_model("test_sifa"), tmp_path / "sifa.pth").eval()
    _assert_same_model(dst, src, x[:1])
    sd["module.layer2.1.def_cor.weight"] = sd["module.layer2.1.def_cor.weight"] * 2
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="1/C"):
        load_checkpoint(create_model("test_sifa"), tmp_path / "bad.pth")


def test_kinetix_convert_cli(randomize, tmp_path, capsys):
    src = randomize(create_model("test_tsm", num_classes=7), torch.randn(2, 3, 8, 64, 64))
    torch.save(
        {"state_dict": _official_tsm(src)}, tmp_path / "TSM_x_RGB_resnet_shift8_blockres_avg_segment8.pth"
    )
    out = tmp_path / "tsm.safetensors"
    rc = cli_main(
        [
            "convert",
            "--model",
            "test_tsm",
            "--src",
            str(tmp_path / "TSM_x_RGB_resnet_shift8_blockres_avg_segment8.pth"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and "wrote" in capsys.readouterr().out
    sd = read_state_dict(out)
    assert torch.equal(sd["fc.weight"], src.fc.weight) and sd["fc.weight"].shape == (7, 64)
    m = create_model("test_tsm", checkpoint=str(out)).eval()
    _assert_same_model(m, src, torch.randn(1, 3, 8, 64, 64))
    # an incomplete checkpoint fails cleanly (exit 2, names the file and the key)
    broken = _official_tsm(src)
    del broken["module.base_model.layer2.0.bn2.running_var"]
    torch.save({"state_dict": broken}, tmp_path / "tsm_broken.pth")
    rc = cli_main(
        [
            "convert",
            "--model",
            "test_tsm",
            "--src",
            str(tmp_path / "tsm_broken.pth"),
            "--out",
            str(tmp_path / "x.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "tsm_broken.pth" in err and "layer2.0.bn2.running_var" in err


def test_shift_layout_mismatch_is_refused():
    tsm, tsn = create_model("test_tsm"), create_model("test_tsn")
    with pytest.raises(CheckpointError, match="a TSM checkpoint"):
        convert_state_dict(tsn, _official_tsm(tsm))
    with pytest.raises(CheckpointError, match="without temporal shifts"):
        convert_state_dict(tsm, _official_tsm(tsn))
    block = create_model("test_tsm", shift_place="block")  # official in-place: the whole block wraps as .net
    sd = {re.sub(r"(layer\d\.\d+)\.", r"\1.net.", k, count=1) if ".layer" in k else k: v
          for k, v in _official_tsm(tsn).items()}  # fmt: skip
    assert "module.base_model.layer2.0.net.conv1.weight" in sd
    load_state_dict_strict(block, convert_state_dict(block, sd))


@pytest.mark.parametrize("shift_place", ["residual", "block"])
def test_official_temporal_pool_checkpoint_loads(randomize, tmp_path, shift_place):
    """The official `make_temporal_pool` wraps layer2 as `TemporalPool(net=layer2)`: its keys read
    `base_model.layer2.net.N...` (and `layer2.net.N.conv1.net.` / `layer2.net.N.net.` where shifted)."""
    x = torch.randn(2, 3, 8, 64, 64)
    src = randomize(create_model("test_tsm", temporal_pool=True, shift_place=shift_place), x)
    sd = {}
    for k, v in src.state_dict().items():
        if k.startswith("fc."):
            sd["module.new_fc." + k[3:]] = v
            continue
        k = k.removeprefix("backbone.")
        if re.match(r"layer\d\.\d+\.", k):
            if shift_place == "residual":
                k = re.sub(r"^(layer\d\.\d+)\.conv1\.", r"\1.conv1.net.", k)  # TemporalShift(conv1)
            else:
                k = re.sub(r"^(layer\d\.\d+)\.", r"\1.net.", k)  # TemporalShift(block)
            k = re.sub(r"^layer2\.", "layer2.net.", k)  # TemporalPool(layer2)
        sd["module.base_model." + k] = v
    assert any(k.startswith("module.base_model.layer2.net.0.") for k in sd)
    torch.save({"state_dict": sd}, tmp_path / "tsm_tpool.pth")
    dst = load_checkpoint(
        create_model("test_tsm", temporal_pool=True, shift_place=shift_place), tmp_path / "tsm_tpool.pth"
    )
    _assert_same_model(dst.eval(), src, x[:1])
    with pytest.raises(CheckpointError, match="shifted blocks"):  # still refused by a TSN model
        convert_state_dict(create_model("test_tsn"), sd)
