"""Grad-CAM on the backbones beyond ResNet (BN-Inception, Inception-v3, MobileNetV2) and on Swin:
the map equals a Grad-CAM computed here with plain forward hooks and tensor gradient hooks on the
layer feeding the global pool; a signal drawn in one region of one frame gets the map's mass; the
feeding-chain fallback for small inputs; `kinetix explain` on a tiny checkpoint; every refusal says
why and which method to use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from kinetix.data.synthetic import sample_temporal_params, temporal_mask
from kinetix.errors import ConfigError
from kinetix.explain import METHODS, explain_video, gradcam, mask_mass_share, methods_for
from kinetix.models import create_model, list_models

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: no OpenMP spin-waits on 2 shared cores


def _keep_outputs(module: nn.Module, store: list):
    """Forward hook: every output of ``module`` (in call order) with its gradient (a tensor hook)."""

    def hook(m, i, o):
        entry = {"act": o.detach(), "tensor": o}
        o.register_hook(lambda g: entry.__setitem__("grad", g))
        store.append(entry)

    return module.register_forward_hook(hook)


# BN-Inception: the branches of inception_5b end in these BNs, each followed by the shared in-place ReLU
_BN_5B = ["1x1_bn", "3x3_bn", "double_3x3_2_bn", "pool_proj_bn"]


def _by_hand(model: nn.Module, x: torch.Tensor, target: int, module: str, grid=False):
    """Grad-CAM of ``model(x)[:, target]`` on the output of ``module``: alpha = spatial mean of the
    gradient per frame and channel, ReLU(sum_k alpha_k A_k) per frame. ``grid``: the output is
    row-major tokens (N, h*w, K). ``module="inception_5b"`` (BN-Inception, not a module): the
    concatenation of its four branch outputs, the ReLU calls that act on the branches' last BNs."""
    store: list = []
    bns: list = []
    if module == "inception_5b":
        hooks = [_keep_outputs(model.backbone.relu, store)]
        hooks += [model.get_submodule(f"backbone.inception_5b_{b}").register_forward_hook(
            lambda m, i, o: bns.append(o)) for b in _BN_5B]  # fmt: skip
    else:
        hooks = [_keep_outputs(model.get_submodule(module), store)]
    try:
        model(x)[:, target].sum().backward()
    finally:
        for h in hooks:
            h.remove()
    if bns:  # the in-place ReLU's output is the BN's output tensor
        store = [next(e for e in store if e["tensor"] is b) for b in bns]
    else:
        store = store[-1:]
    A = torch.cat([e["act"] for e in store], -1 if grid else 1)
    G = torch.cat([e["grad"] for e in store], -1 if grid else 1)
    if grid:  # (N, h*w, K) -> (N, K, h, w)
        side = round(A.shape[1] ** 0.5)
        A, G = (t.transpose(1, 2).reshape(t.shape[0], -1, side, side) for t in (A, G))
    cam = torch.zeros(A.shape[0], *A.shape[-2:])
    for n in range(A.shape[0]):  # per frame
        alpha = G[n].mean((1, 2))  # (K,)
        cam[n] = torch.relu((alpha[:, None, None] * A[n]).sum(0))
    return cam.view(x.shape[0], -1, *cam.shape[-2:]), A.shape[1]


def _model(name: str, num_frames: int, **kwargs) -> nn.Module:
    model = create_model(name, num_frames=num_frames, **kwargs).eval()
    with torch.no_grad():  # an untrained classifier is ~0: give the target logit real weights
        fc = model.get_classifier()
        fc.weight.normal_(generator=torch.Generator().manual_seed(0))
    return model


# (model, kwargs, frames, input size, module whose output feeds the pool, tokens, layer name reported)
CASES = {
    "gsm_bninception": ("gsm_bninception", {}, 2, 128, "inception_5b", False, "backbone.forward_features"),
    "tsm_bninception": ("tsm_bninception", {}, 2, 128, "inception_5b", False, "backbone.forward_features"),
    "gsm_inceptionv3": ("test_gsm_inceptionv3", {}, 2, 229, "backbone.Mixed_7c", False, "backbone.Mixed_7c"),
    "tsn_inceptionv3_tv": ("test_tsn_inceptionv3", {"variant": "torchvision"}, 2, 299, "backbone.Mixed_7c",
                           False, "backbone.Mixed_7c"),
    "tsm_mobilenetv2": ("test_tsm_mobilenetv2", {}, 2, 128, "backbone.features", False, "backbone.features.18"),
    "swin": ("test_swin", {}, 4, 64, "norm", True, "norm"),
    "sifa_swin": ("test_sifa_swin", {}, 8, 64, "norm", True, "norm"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_gradcam_equals_hooked_reference(case):
    """BN-Inception's last block is a concatenation no module returns: the reference takes the four
    branch outputs of inception_5b (the last four calls of the shared ReLU) and concatenates them."""
    name, kwargs, T, size, module, grid, layer = CASES[case]
    model = _model(name, T, **kwargs)
    x = torch.randn(1, 3, T, size, size, generator=torch.Generator().manual_seed(1))
    cam, logits, layers = gradcam(model, x)  # default target: the top class
    assert layers == (layer,)
    torch.testing.assert_close(logits, model(x).detach())
    top = int(logits.argmax())
    want, channels = _by_hand(model, x, top, module, grid)
    if "bninception" in name:
        assert channels == 1024  # 352 + 320 + 224 + 128: all of inception_5b
    assert want.max() > 0 and (want > 0).float().mean() > 0.15  # a non-trivial map
    torch.testing.assert_close(cam, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    other = (top + 1) % logits.shape[-1]
    cam, _, _ = gradcam(model, x, target=other)
    want, _ = _by_hand(model, x, other, module, grid)
    torch.testing.assert_close(cam, want, rtol=1e-4, atol=1e-6 * max(float(want.max()), 1e-3))


def _positive(model: nn.Module) -> nn.Module:
    """Weights in (0, 1/fan-in), zero biases, identity BatchNorm: zero input gives zero activations
    everywhere and a positive signal is only ever summed and spread, never cancelled."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g) / p[0].numel() if p.ndim > 1 else torch.zeros_like(p))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(1.0)
    return model.eval()


@pytest.mark.parametrize(
    "name, size", [("tsn_bninception", 128), ("test_gsm_inceptionv3", 229), ("test_tsm_mobilenetv2", 128)]
)
def test_gradcam_mass_lies_on_a_one_frame_signal(name, size):
    """Input zero (the mean colour) except a synthetic shape in frame 2 of 4: the map's mass inside
    the shape is several times a uniform map's (the shape's share of the clip), the signal frame
    holds almost all of it, and the shape beats its mirror image (a transposed map would not)."""
    T, f = 4, 2
    model = _positive(create_model(name, num_frames=T))
    shapes = (temporal_mask("static square", sample_temporal_params("static square", size, np.random.default_rng(s)),
                            1, size)[0] for s in range(100))  # fmt: skip
    shape = next(m for m in shapes if m[: size // 2, size // 2 :].sum() > 0.8 * m.sum())  # (H, W), top right
    mask = np.zeros((T, size, size), bool)
    mask[f] = shape
    x = torch.zeros(1, 3, T, size, size)
    x[0, :, f, torch.from_numpy(shape)] = 1.0
    cam, _, _ = gradcam(model, x)
    heat = F.interpolate(cam[0][:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    heat = heat.numpy()  # (T, H, W)
    share, uniform = mask_mass_share(heat, mask), float(mask.mean())
    mirrored = mask_mass_share(heat, mask.transpose(0, 2, 1))
    print(
        f"{name}: share {share:.3f}, uniform {uniform:.3f}, mirrored {mirrored:.3f}, frame {heat[f].sum() / heat.sum():.3f}"
    )
    assert share > 4 * uniform, (share, uniform)
    assert heat[f].sum() > 0.75 * heat.sum()
    assert share > 1.3 * mirrored


def test_small_inputs_fall_back_along_the_feeding_chain():
    """When the pooled map is under 4x4, the deepest map of the chain of modules feeding it is used
    (the module whose output is the pool's input, the module whose output is that one's input, ...):
    Inception-v3 at 75 px (last block 1x1, Mixed_6e 3x3) -> Mixed_5d (7x7); MobileNetV2 at 64 px ->
    features.13 (the last stride-16 block). BN-Inception's blocks are not modules: its last one stays."""
    x = torch.randn(1, 3, 2, 75, 75)
    model = _model("test_gsm_inceptionv3", 2)
    cam, _, layers = gradcam(model, x, target=1)
    assert layers == ("backbone.Mixed_5d",) and cam.shape == (1, 2, 7, 7)
    torch.testing.assert_close(cam, _by_hand(model, x, 1, "backbone.Mixed_5d")[0], rtol=1e-4, atol=1e-9)
    model = _model("test_tsm_mobilenetv2", 2)
    cam, _, layers = gradcam(model, torch.randn(1, 3, 2, 64, 64))
    assert layers == ("backbone.features.13",) and cam.shape == (1, 2, 4, 4)
    _, _, layers = gradcam(model, torch.randn(1, 3, 2, 64, 64), min_size=1)
    assert layers == ("backbone.features.18",)
    bn = create_model("tsn_bninception", num_frames=1).eval()
    _, _, layers = gradcam(bn, torch.randn(1, 3, 1, 64, 64))  # 2x2, nothing feeds it through a module
    assert layers == ("backbone.forward_features",)
    cam, _, layers = gradcam(model, torch.randn(1, 3, 2, 64, 64), layers=("backbone.features.6",))
    assert layers == ("backbone.features.6",) and cam.shape[-2:] == (8, 8)


def test_cli_explain_inceptionv3(synth, tmp_path, capsys):
    from kinetix.cli.main import main

    model = create_model("test_gsm_inceptionv3")
    weights = tmp_path / "gsm.safetensors"
    save_file(model.state_dict(), str(weights))
    video = synth / "videos" / "v00003.mp4"
    args = ["explain", str(video), "--model", "test_gsm_inceptionv3", "--checkpoint", str(weights)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "gradcam" in out and "Grad-CAM on backbone.Mixed_5d" in out
    png, mp4 = tmp_path / "o" / "v00003_gradcam.png", tmp_path / "o" / "v00003_gradcam.mp4"
    assert png.read_bytes()[:4] == b"\x89PNG" and mp4.stat().st_size > 0
    assert main([*args, "--method", "attention", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "convolutional network" in err and "use --method gradcam" in err


def _registered():
    """Every registered recogniser: the tiny variants plus the full ones without a tiny twin."""
    return [*list_models("test_*"), "tsn_bninception", "gsm_bninception", "tsm_bninception", "swin_t"]


def test_every_refusal_says_why_and_what_to_use(synth):
    """No registered model is refused outright; each method that does not apply is refused with a
    ConfigError that names the model class, gives a reason and the methods that do apply."""
    video = synth / "videos" / "v00000.mp4"
    seen = set()
    for name in _registered():
        with torch.device("meta"):  # refused before any compute: no weights needed
            model = create_model(name)
        allowed = methods_for(model)
        assert allowed, name
        for method in set(METHODS) - set(allowed):
            with pytest.raises(ConfigError) as e:
                explain_video(model, video, None, method)
            msg = str(e.value)
            assert msg.startswith(f"--method {method} does not apply to {type(model).__name__}: "), msg
            reason = msg.split(": ", 1)[1].rsplit("; use --method ", 1)
            assert len(reason) == 2 and len(reason[0]) > 20, msg
            assert set(reason[1].split(" or ")) == set(allowed), msg
            seen.add(reason[0])
    assert len(seen) >= 8  # the reasons differ by family and method
    with pytest.raises(ConfigError, match="no method for Linear"):
        explain_video(nn.Linear(2, 2), video, None)
