"""MobileNetV2-TSM: structure as released (shifted blocks, cache sizes of the online demo), the
residual shift against a direct reference, streaming == causal clip, and converters from the
official TSM layouts (synthetic state dicts carrying the official key names and shapes)."""

import pytest
import torch
import torch.nn as nn

from kinetix.deploy import export_onnx
from kinetix.errors import CheckpointError
from kinetix.layers.temporal import TemporalShift
from kinetix.models import create_model, load_checkpoint
from kinetix.models._builder import convert_state_dict, load_state_dict_strict
from kinetix.models.mobilenetv2 import MobileNetV2
from kinetix.models.recognizer2d import StreamingRecognizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_same_model(dst, src, x):
    torch.testing.assert_close(dst(x), src(x))
    y, y2 = src(x), src(torch.randn_like(x))
    assert (y - y2).abs().max() > 1e-2 * y.abs().max()  # the comparison is not trivial


# official online demo: shift_block_idx = [2, 4, 5, 7, 8, 9, 11, 12, 14, 15] over the inverted
# residual blocks, i.e. features[idx + 1]; shift buffers (1,3,56,56), (1,4,28,28)x2, (1,8,14,14)x3,
# (1,12,14,14)x2, (1,20,7,7)x2 for a 224 input
DEMO_SHIFTED = [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
DEMO_BUFFERS = [(3, 56), (4, 28), (4, 28), (8, 14), (8, 14), (8, 14), (12, 14), (12, 14), (20, 7), (20, 7)]


def test_imagenet_mobilenetv2_size():
    # torchvision's mobilenet_v2: 3,504,872 parameters with the 1000-class head
    assert sum(p.numel() for p in MobileNetV2(num_classes=1000).parameters()) == 3_504_872


def test_shift_positions_and_caches_match_the_online_demo():
    model = create_model("tsm_mobilenetv2_online", num_classes=27).eval()
    shifted = [
        i
        for i, b in enumerate(model.backbone.features)
        if isinstance(getattr(b, "temporal_in", None), TemporalShift)
    ]
    assert shifted == DEMO_SHIFTED
    stream = StreamingRecognizer(model)
    stream(torch.randn(1, 3, 224, 224))
    assert [tuple(m.cache.shape) for m in stream.layers] == [(1, c, s, s) for c, s in DEMO_BUFFERS]
    # the offline model shifts the same blocks, both ways
    off = create_model("tsm_mobilenetv2")
    layers = [m for m in off.modules() if isinstance(m, TemporalShift)]
    assert len(layers) == 10 and not any(m.causal for m in layers)


def _reference_shift(x, t, causal):
    """Official TSM shift (zeros + slices): first fold <- t+1 (t-1 if causal), second fold <- t-1."""
    nt, c, h, w = x.shape
    x = x.view(nt // t, t, c, h, w)
    f = c // 8
    out = x.clone()
    out[:, :, : 2 * f] = 0
    if causal:
        out[:, 1:, :f] = x[:, :-1, :f]
        out[:, :, f : 2 * f] = x[:, :, f : 2 * f]
    else:
        out[:, :-1, :f] = x[:, 1:, :f]
        out[:, 1:, f : 2 * f] = x[:, :-1, f : 2 * f]
    return out.view(nt, c, h, w)


def _reference_forward(model, clip, causal):
    """Recogniser forward written directly from the released MobileNetV2-TSM: ``x + conv(shift(x))``
    in the blocks with an identity and an expansion, the plain block elsewhere."""
    b, c, t, h, w = clip.shape
    x = clip.transpose(1, 2).reshape(b * t, c, h, w)
    for blk in model.backbone.features:
        if isinstance(getattr(blk, "temporal_in", None), TemporalShift):
            x = x + blk.conv(_reference_shift(x, t, causal))
        elif getattr(blk, "use_res_connect", False):
            x = x + blk.conv(x)
        elif hasattr(blk, "conv"):
            x = blk.conv(x)
        else:
            x = blk(x)
    feats = x.mean((2, 3)).view(b, t, -1)
    return model.fc(feats).mean(1)


@pytest.mark.parametrize("name,causal", [("tsm_mobilenetv2", False), ("tsm_mobilenetv2_online", True)])
def test_residual_shift_matches_reference(randomize, name, causal):
    clip = torch.randn(2, 3, 8, 32, 32)
    model = randomize(create_model(name, num_classes=7), clip)
    with torch.no_grad():
        ref = _reference_forward(model, clip, causal)
        fast = model(clip)  # in-place shift at inference
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    x = clip.clone().requires_grad_(True)
    out = model(x)  # out-of-place shift with autograd
    torch.testing.assert_close(out.detach(), ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    y2 = model(torch.randn_like(clip))
    assert (y2.detach() - ref).abs().max() > 1e-2 * ref.abs().max()  # not a constant output


@pytest.mark.parametrize(
    "name,dtype,tol",
    [
        ("tsm_mobilenetv2_online", torch.float64, 1e-12),  # exact up to float64 rounding
        ("tsm_mobilenetv2_online", torch.float32, 5e-5),  # B vs B*T conv kernels differ in float32
        ("test_tsm_mobilenetv2_online", torch.float32, 1e-5),
    ],
)
def test_streaming_equals_causal_clip(randomize, name, dtype, tol):
    clip = torch.randn(2, 3, 8, 64, 64, dtype=dtype)
    model = randomize(create_model(name, num_classes=7).to(dtype), clip)
    with torch.no_grad():
        expected = model.forward_frames(clip)  # (B, T, K)
    stream = StreamingRecognizer(model)
    for _ in range(2):  # the second pass checks reset()
        stream.reset()
        got = torch.stack([stream(clip[:, :, t]) for t in range(8)], 1)
        assert (got - expected).abs().max() <= tol * expected.abs().max(), (got - expected).abs().max()
    assert (expected[:, 1:] - expected[:, :1]).abs().max() > 1e-2 * expected.abs().max()
    with pytest.raises(ValueError, match="causal"):
        StreamingRecognizer(create_model("tsm_mobilenetv2"))


# ---------------------------------------------------------------------------------------- converters
def _official_module_names(shift: bool) -> list[str]:
    """Conv/BN module names of the TSM repository's MobileNetV2 in forward order (tonylins layout:
    ``conv_bn`` = Sequential(conv, bn, relu6); blocks = one flat Sequential with the ReLU6s counted;
    ``.net`` inside the first conv of shifted blocks)."""
    names = ["features.0.0", "features.0.1"]
    idx, inp = 1, 32
    for t, c, n, s in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]:
        for i in range(n):
            res = (s if i == 0 else 1) == 1 and inp == c
            convs = (0, 1, 3, 4) if t == 1 else (0, 1, 3, 4, 6, 7)
            for j in convs:
                net = ".net" if shift and res and t != 1 and j == 0 else ""
                names.append(f"features.{idx}.conv.{j}{net}")
            idx, inp = idx + 1, c
    return [*names, "features.18.0", "features.18.1"]


def _official_state_dict(model, prefix: str, shift: bool, head: str) -> dict:
    mods = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    names = _official_module_names(shift)
    assert len(mods) == len(names)
    out = {}
    for name, m in zip(names, mods):
        out.update({f"{prefix}{name}.{k}": v.clone() for k, v in m.state_dict().items()})
    out.update({f"{head}.{k}": v.clone() for k, v in model.fc.state_dict().items()})
    return out


def _fresh(name, **kw):
    torch.manual_seed(123)
    return create_model(name, **kw).eval()


@pytest.mark.parametrize(
    "name,prefix,shift,head",
    [
        ("tsm_mobilenetv2", "module.base_model.", True, "module.new_fc"),  # offline TSM K400
        (
            "tsm_mobilenetv2",
            "module.base_model.",
            True,
            "module.base_model.classifier",
        ),  # trained without dropout
        ("tsm_mobilenetv2_online", "", False, "classifier"),  # online demo (mobilenetv2_jester_online)
    ],
)
def test_official_checkpoints_convert(randomize, name, prefix, shift, head, tmp_path):
    clip = torch.randn(1, 3, 8, 32, 32)
    src = randomize(create_model(name, num_classes=27), clip)
    sd = _official_state_dict(src, prefix, shift, head)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 files have none
    dst = _fresh(name, num_classes=27)
    load_state_dict_strict(dst, convert_state_dict(dst, sd))
    with torch.no_grad():
        _assert_same_model(dst, src, clip)
    path = tmp_path / "official.pth.tar"  # the official wrapper, read by load_checkpoint
    torch.save({"epoch": 100, "arch": "mobilenetv2", "state_dict": sd}, path)
    dst2 = load_checkpoint(_fresh(name, num_classes=27), path)
    with torch.no_grad():
        torch.testing.assert_close(dst2(clip), src(clip))


def test_tsn_layout_is_refused_by_tsm_model():
    src = create_model("tsm_mobilenetv2", num_classes=5)
    sd = _official_state_dict(src, "module.base_model.", False, "module.new_fc")  # no .net: a TSN file
    with pytest.raises(CheckpointError, match="without temporal shifts"):
        convert_state_dict(create_model("tsm_mobilenetv2", num_classes=5), sd)


@pytest.mark.parametrize("layout", ["torchvision", "tsm_repo"])
def test_imagenet_weights_load_into_the_backbone(layout):
    image = MobileNetV2(num_classes=1000).eval()
    if layout == "torchvision":  # kinetix backbone names are torchvision's
        sd = image.state_dict()
    else:  # the TSM repository's ImageNet file (mobilenetv2_1.0-f2a8633): flat layout, `classifier`
        holder = nn.Module()
        holder.backbone, holder.fc = image, image.classifier[1]
        sd = _official_state_dict(holder, "", False, "classifier")
    model = create_model("tsm_mobilenetv2", num_classes=400)
    fc_before = model.fc.weight.clone()
    load_state_dict_strict(model, convert_state_dict(model, sd))
    got, want = model.backbone.state_dict(), image.state_dict()
    assert set(want) - set(got) == {"classifier.1.weight", "classifier.1.bias"}
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    torch.testing.assert_close(model.fc.weight, fc_before)  # the ImageNet head is not the video head
    assert model.num_classes == 400


@pytest.mark.slow
def test_clip_model_exports_to_onnx(randomize, tmp_path):
    """The offline MobileNetV2-TSM (in-place residual shift at inference) exports and matches in
    onnxruntime (the online model's step export is checked in tests/deploy/test_stream.py)."""
    pytest.importorskip("onnxruntime")
    clip = torch.randn(1, 3, 8, 64, 64)
    model = randomize(create_model("test_tsm_mobilenetv2"), clip)
    res = export_onnx(model, tmp_path / "m.onnx")
    assert res.logit_scale > 0.1 and res.max_abs_diff <= 1e-4 * res.logit_scale
