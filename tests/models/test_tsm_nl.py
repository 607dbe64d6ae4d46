"""TSM with non-local blocks: the block against TSM's ``NONLocalBlock3D`` formula, identity at
initialisation, the released positions, and the official checkpoint layout (``layerX.Y.block.*`` /
``layerX.Y.nl.*``) against a TSM model with the reference non-local applied where the official
``NL3DWrapper`` wraps a block."""

import re

import pytest
import torch
import torch.nn.functional as F

from kinetix.layers.temporal import NonLocal3D, TemporalShift
from kinetix.models import create_model, load_checkpoint
from kinetix.models._complexity import model_complexity
from kinetix.models.recognizer2d import StreamingRecognizer, _resnet_recognizer_tiny, _tsm_kwargs
from kinetix.models.resnet import BasicBlock, ResNet, load_image_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _nl_reference(x5, p, bn_train=False):
    """Official embedded-Gaussian NONLocalBlock3D on ``(N, C, T, H, W)`` with tensors ``p`` under the
    official names (``theta``, ``g.0``, ``phi.0``, ``W.0``, ``W.1``; sub_sample, bn_layer)."""
    n = x5.shape[0]
    ci = p["theta.weight"].shape[0]
    g = F.max_pool3d(F.conv3d(x5, p["g.0.weight"], p["g.0.bias"]), (1, 2, 2)).view(n, ci, -1).transpose(1, 2)
    theta = F.conv3d(x5, p["theta.weight"], p["theta.bias"]).view(n, ci, -1).transpose(1, 2)
    phi = F.max_pool3d(F.conv3d(x5, p["phi.0.weight"], p["phi.0.bias"]), (1, 2, 2)).view(n, ci, -1)
    y = torch.matmul(F.softmax(torch.matmul(theta, phi), -1), g)  # (N, THW, ci)
    y = y.transpose(1, 2).reshape(n, ci, *x5.shape[2:])
    wy = F.conv3d(y, p["W.0.weight"], p["W.0.bias"])
    bn = [p[f"W.1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
    return F.batch_norm(wy, *bn, bn_train, 0.1, 1e-5) + x5


def _official_params(m: NonLocal3D):
    sd = m.state_dict()
    return {re.sub(r"^(g|phi)\.", r"\1.0.", k): v for k, v in sd.items()}


@pytest.mark.parametrize("train", [False, True])
def test_non_local_matches_official_formula(train):
    t, c = 3, 8
    m = NonLocal3D(c, t)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)
    m.W[1].running_mean.normal_()
    m.W[1].running_var.uniform_(0.5, 1.5)
    ref = {k: v.clone() for k, v in _official_params(m).items()}
    m.train(train)
    x = torch.randn(2 * t, c, 6, 4, requires_grad=True)
    x5 = x.detach().view(2, t, c, 6, 4).transpose(1, 2).requires_grad_()  # (N, C, T, H, W)
    y, y_ref = m(x), _nl_reference(x5, ref, train)
    torch.testing.assert_close(y, y_ref.transpose(1, 2).reshape(2 * t, c, 6, 4), rtol=1e-5, atol=1e-5)
    if train:
        torch.testing.assert_close(m.W[1].running_mean, ref["W.1.running_mean"])
        g = torch.randn_like(y)
        (y * g).sum().backward()
        (y_ref.transpose(1, 2).reshape_as(g) * g).sum().backward()
        torch.testing.assert_close(x.grad, x5.grad.transpose(1, 2).reshape_as(x), rtol=1e-4, atol=1e-5)


def test_identity_at_init_and_released_positions():
    nl = create_model("test_tsm_nl").eval()
    plain = _resnet_recognizer_tiny(**_tsm_kwargs(18, layers=(1, 3, 5, 1))).eval()
    plain.load_state_dict({k: v for k, v in nl.state_dict().items() if ".non_local." not in k})
    torch.nn.init.normal_(plain.fc.weight, std=0.5)
    nl.fc.weight.data.copy_(plain.fc.weight)
    x = torch.randn(2, 3, 8, 64, 64)
    torch.testing.assert_close(nl(x), plain(x))  # zero-initialised W BN: every NL block is the identity
    pos = [
        n.removeprefix("backbone.").removesuffix(".non_local")
        for n, m in nl.named_modules()
        if isinstance(m, NonLocal3D)
    ]
    assert pos == ["layer2.0", "layer2.2", "layer3.0", "layer3.2", "layer3.4"]  # ops/non_local.py
    with pytest.raises(ValueError, match="non-local"):
        StreamingRecognizer(nl)


def test_full_size_params_and_gmacs():
    base, nl = model_complexity("tsm_r50"), model_complexity("tsm_r50_nl")
    per = {
        c: 3 * (c * (c // 2) + c // 2) + (c // 2) * c + c + 2 * c for c in (512, 1024)
    }  # theta/phi/g, W, BN
    assert nl.params - base.params == 2 * per[512] + 3 * per[1024] == 7_358_464
    # extra MACs at 224: convs at full resolution + softmax(QK^T)V over T*H*W queries, T*H*W/4 keys
    extra = 0
    for c, hw, k in ((512, 28 * 28, 2), (1024, 14 * 14, 3)):
        q = 8 * hw
        extra += k * (4 * q * c * c // 2 + 2 * q * (q // 4) * c // 2)
    assert abs((nl.gmacs - base.gmacs) / (extra / 1e9) - 1) < 1e-3


def _official_tsm_nl(model):
    """kinetix TSM-NL -> the released layout: ``module.base_model``, ``conv1.net`` (blockres shift),
    NL-wrapped blocks under ``block.`` with their NL under ``nl.`` (``g.0``/``phi.0``), ``new_fc``."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            out["module.new_fc." + k[3:]] = v
            continue
        k = k.removeprefix("backbone.")
        k = re.sub(r"^(layer\d\.\d+)\.conv1\.", r"\1.conv1.net.", k)  # every block is shifted (R50 / tiny)
        m = re.match(r"^(layer\d\.\d+)\.non_local\.(.*)$", k)
        if m:
            k = f"{m[1]}.nl." + re.sub(r"^(g|phi)\.", r"\1.0.", m[2])
        elif re.match(r"^(layer2\.[02]|layer3\.[024])\.", k):
            k = re.sub(r"^(layer\d\.\d+)\.", r"\1.block.", k)
        out["module.base_model." + k] = v
    return out


def _mmaction2_tsm_nl(model):
    """kinetix TSM-NL -> mmaction2 ``ResNetTSM`` with ``NL3DWrapper`` (mmcv ``NonLocal3d``: ``g.0.conv``,
    ``theta.conv``, ``phi.0.conv``, ``conv_out.conv`` without bias, ``conv_out.bn``)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            out["cls_head.fc_cls." + k[3:]] = v
            continue
        k = k.removeprefix("backbone.")
        m = re.match(r"^(layer\d\.\d+)\.non_local\.(.*)$", k)
        if m:
            if m[2] == "W.0.bias":
                continue
            tail = {"g.": "g.0.conv.", "phi.": "phi.0.conv.", "theta.": "theta.conv.", "W.0.": "conv_out.conv.",
                    "W.1.": "conv_out.bn."}  # fmt: skip
            pre = next(p for p in tail if m[2].startswith(p))
            out[f"backbone.{m[1]}.non_local_block.{tail[pre]}{m[2][len(pre) :]}"] = v
            continue
        k = re.sub(r"^conv1\.", "conv1.conv.", k)
        k = re.sub(r"^bn1\.", "conv1.bn.", k)
        k = re.sub(r"\.conv(\d)\.", r".conv\1.conv.", k).replace(".conv1.conv.", ".conv1.conv.net.")
        k = re.sub(r"\.bn(\d)\.", r".conv\1.bn.", k)
        k = k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        if re.match(r"^(layer2\.[02]|layer3\.[024])\.", k):
            k = re.sub(r"^(layer\d\.\d+)\.", r"\1.block.", k)
        out["backbone." + k] = v
    return out


def test_mmaction2_layout_converts(tmp_path):
    src = create_model("test_tsm_nl", num_frames=4).eval()
    torch.nn.init.normal_(src.fc.weight, std=0.5)
    for m in src.modules():
        if isinstance(m, NonLocal3D):
            torch.nn.init.normal_(m.W[1].weight)
            torch.nn.init.zeros_(m.W[0].bias)  # mmcv: no bias in conv_out
    sd = _mmaction2_tsm_nl(src)
    assert "backbone.layer3.4.non_local_block.conv_out.bn.running_var" in sd
    assert (
        "backbone.layer2.0.block.conv1.conv.net.weight" in sd
        and "backbone.layer2.1.conv1.conv.net.weight" in sd
    )
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "mm.pth")
    dst = load_checkpoint(create_model("test_tsm_nl", num_frames=4), tmp_path / "mm.pth").eval()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        y = src(x)
        torch.testing.assert_close(dst(x), y)
        for m in src.modules():  # the non-local terms matter in this comparison
            if isinstance(m, NonLocal3D):
                torch.nn.init.zeros_(m.W[1].weight)
        assert (src(x) - y).abs().max() > 1e-2 * y.abs().max()


def test_official_checkpoint_converts_and_matches_reference(tmp_path):
    src = create_model("test_tsm_nl", num_frames=4).train()
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        for p in src.parameters():
            if p.dim() > 1:
                p.normal_(0, (2 / p[0].numel()) ** 0.5)
        for m in src.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
                m.weight.uniform_(0.5, 1.5)
        src(x)  # BN statistics from the data
    sd = _official_tsm_nl(src.eval())
    assert (
        "module.base_model.layer2.0.block.conv1.net.weight" in sd
        and "module.base_model.layer2.1.conv1.net.weight" in sd
    )
    assert sd["module.base_model.layer3.4.nl.g.0.weight"].shape == (16, 32, 1, 1, 1)  # C = 32, C/2
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": sd}, tmp_path / "TSM_nl.pth")
    dst = load_checkpoint(create_model("test_tsm_nl", num_frames=4), tmp_path / "TSM_nl.pth").eval()

    # reference: the same TSM without NL, official NL applied to the wrapped blocks' outputs
    plain = _resnet_recognizer_tiny(**_tsm_kwargs(18, layers=(1, 3, 5, 1)), num_frames=4).eval()
    plain.load_state_dict({k: v for k, v in src.state_dict().items() if ".non_local." not in k})
    for blk in ("layer2.0", "layer2.2", "layer3.0", "layer3.2", "layer3.4"):
        p = {k.split(".nl.")[1]: v for k, v in sd.items() if f".{blk}.nl." in k}

        def hook(mod, inp, out, p=p):
            nt, c, h, w = out.shape
            y = _nl_reference(
                out.view(nt // 4, 4, c, h, w).transpose(1, 2), {k: v.double() for k, v in p.items()}
            )
            return y.transpose(1, 2).reshape(nt, c, h, w)

        plain.backbone.get_submodule(blk).register_forward_hook(hook)
    with torch.no_grad():
        got, expected = dst.double()(x.double()), plain.double()(x.double())
    torch.testing.assert_close(got, expected)
    assert (expected[0] - expected[1]).abs().max() > 1e-2 * expected.abs().max()
    assert sum(isinstance(m, TemporalShift) for m in dst.modules()) == 10


def test_imagenet_resnet_weights_leave_only_non_local_at_init():
    image = ResNet(BasicBlock, (1, 3, 5, 1), num_classes=1000, base_width=8).state_dict()
    m = create_model("test_tsm_nl")
    missing = load_image_weights(m, image)
    assert (
        missing and all(".non_local." in k for k in missing) and len(missing) == 5 * 12
    )  # g/theta/phi/W.0 w+b, W.1 BN (4)
    assert torch.equal(m.backbone.layer3[4].conv1.weight,
                       image["layer3.4.conv1.weight"])  # fmt: skip


def test_partial_bn_keeps_temporal_layers_trainable():
    """Official partial BN freezes BatchNorm2d only: the zero-initialised non-local BN (and GSM's
    gate BN) must keep learning, or the non-local blocks stay the identity."""
    m = create_model("test_tsm_nl", partial_bn=True).train()
    nl_bns = [b.W[1] for b in m.modules() if isinstance(b, NonLocal3D)]
    assert nl_bns and all(b.training and b.weight.requires_grad for b in nl_bns)
    bns = [b for b in m.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert bns[0].training and not any(b.training or b.weight.requires_grad for b in bns[1:])
    m(torch.randn(2, 3, 8, 64, 64)).sum().backward()
    assert all(b.weight.grad is not None and b.weight.grad.abs().sum() > 0 for b in nl_bns)
