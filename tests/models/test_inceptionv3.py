"""Inception-v3 TSN/GSM: torchvision's published size, the official GSM network (a transcription of
``inceptionv3_gsm.yaml`` run as a reference), converters for the official GSM checkpoints and the
two ImageNet files, GSM overhead against the figures derived from the official code."""

import pytest
import torch
import torch.nn.functional as F

from kinetix.errors import CheckpointError
from kinetix.layers.temporal import GateShift
from kinetix.models import create_model, load_checkpoint
from kinetix.models._builder import convert_state_dict, load_state_dict_strict
from kinetix.models._complexity import model_complexity
from kinetix.models.inceptionv3 import GSM_POSITIONS, InceptionV3
from kinetix.models.recognizer2d import StreamingRecognizer
from kinetix.models.resnet import load_image_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

_GSM_IDS = {"mixed_conv", "mixed_1_conv", "mixed_2_conv", "mixed_3_tower_conv", "mixed_4_conv", "mixed_5_conv",
            "mixed_7_conv", "mixed_8_tower_conv", "mixed_9_conv", "mixed_10_conv"}  # yaml: fPlane  # fmt: skip


class _OfficialGSMInceptionV3:
    """``inceptionv3_gsm.yaml`` transcribed (num_output, kernel_h x kernel_w, stride, pad of every
    conv, Caffe ceil-mode pools, concat order), run functionally on the official keys. The first
    call creates the tensors (random, He-scaled, channels divided by ``div``) — an official-layout
    state dict that owes nothing to kinetix."""

    def __init__(self, div: int, num_frames: int, gsm: bool = True):
        self.sd, self.div, self.t, self.gsm = {}, div, num_frames, gsm
        self.g = torch.Generator().manual_seed(0)

    def _new(self, key, shape, kind):
        if key not in self.sd:
            r = torch.rand if kind == "pos" else torch.randn
            v = r(shape, generator=self.g, dtype=torch.double)
            v = {"he": v * (2 / max(v[0].numel(), 1)) ** 0.5, "pos": v + 0.5, "small": v * 0.1}[kind]
            self.sd[key] = v.float().double()  # exactly representable in a float32 checkpoint
        return self.sd[key]

    def conv(self, x, name, cout, kh, kw, stride=1, ph=0, pw=0):
        w = self._new(f"{name}_Conv2D.weight", (cout // self.div, x.shape[1], kh, kw), "he")
        y = F.conv2d(x, w, self._new(f"{name}_Conv2D.bias", (cout // self.div,), "small"), stride, (ph, pw))
        if self.gsm and name in _GSM_IDS:
            y = self.gsm_module(y, f"gsm_{name}_Conv2D")
        bn = [self._new(f"{name}_batchnorm.{p}", (y.shape[1],), k)
              for p, k in (("running_mean", "small"), ("running_var", "pos"), ("weight", "pos"), ("bias", "small"))]  # fmt: skip
        return F.relu(F.batch_norm(y, *bn, False, 0.0, 1e-5))

    def gsm_module(self, x, name):
        """Official gsmModule (eval): gate = tanh(conv3D(relu(bn3d(x)))), shifted gated halves, interleave."""
        nt, c, h, w = x.shape
        b, t = nt // self.t, self.t
        x5 = x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        bn = [self._new(f"{name}.bn.{p}", (c,), k)
              for p, k in (("running_mean", "small"), ("running_var", "pos"), ("weight", "pos"), ("bias", "small"))]  # fmt: skip
        z = F.relu(F.batch_norm(x5, *bn, False, 0.0, 1e-5))
        w3 = self._new(f"{name}.conv3D.weight", (2, c // 2, 3, 3, 3), "he")
        gate = torch.tanh(
            F.conv3d(z, w3, self._new(f"{name}.conv3D.bias", (2,), "small"), padding=1, groups=2)
        )
        x1, x2 = x5[:, : c // 2], x5[:, c // 2 :]
        y1, y2 = gate[:, :1] * x1, gate[:, 1:] * x2
        y1 = torch.cat([y1[:, :, 1:], torch.zeros_like(y1[:, :, :1])], 2) + x1 - y1  # t <- t+1
        y2 = torch.cat([torch.zeros_like(y2[:, :, :1]), y2[:, :, :-1]], 2) + x2 - y2  # t <- t-1
        y1 = y1.view(b, 2, c // 4, t, h, w).transpose(1, 2).reshape(b, c // 2, t, h, w)
        y2 = y2.view(b, 2, c // 4, t, h, w).transpose(1, 2).reshape(b, c // 2, t, h, w)
        return torch.cat([y1, y2], 1).permute(0, 2, 1, 3, 4).reshape(nt, c, h, w)

    def __call__(self, x):
        cv, mp = self.conv, lambda z, p=0, s=2: F.max_pool2d(z, 3, s, p, ceil_mode=True)
        ap = lambda z: F.avg_pool2d(z, 3, 1, 1, ceil_mode=True)  # noqa: E731
        x = mp(cv(cv(cv(x, "conv", 32, 3, 3, 2), "conv_1", 32, 3, 3), "conv_2", 64, 3, 3, 1, 1, 1))
        x = mp(cv(cv(x, "conv_3", 80, 1, 1), "conv_4", 192, 3, 3))
        for m, pool in (("mixed", 32), ("mixed_1", 64), ("mixed_2", 64)):
            x = torch.cat([
                cv(x, f"{m}_conv", 64, 1, 1),
                cv(cv(x, f"{m}_tower_conv", 48, 1, 1), f"{m}_tower_conv_1", 64, 5, 5, 1, 2, 2),
                cv(cv(cv(x, f"{m}_tower_1_conv", 64, 1, 1), f"{m}_tower_1_conv_1", 96, 3, 3, 1, 1, 1),
                   f"{m}_tower_1_conv_2", 96, 3, 3, 1, 1, 1),
                cv(ap(x), f"{m}_tower_2_conv", pool, 1, 1)], 1)  # fmt: skip
        x = torch.cat([
            cv(x, "mixed_3_conv", 384, 3, 3, 2),
            cv(cv(cv(x, "mixed_3_tower_conv", 64, 1, 1), "mixed_3_tower_conv_1", 96, 3, 3, 1, 1, 1),
               "mixed_3_tower_conv_2", 96, 3, 3, 2),
            mp(x)], 1)  # fmt: skip
        for m, c7 in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)):
            a = cv(cv(x, f"{m}_tower_conv", c7, 1, 1), f"{m}_tower_conv_1", c7, 7, 1, 1, 3, 0)
            d = cv(x, f"{m}_tower_1_conv", c7, 1, 1)
            for i, (kh, kw, co) in enumerate([(1, 7, c7), (7, 1, c7), (1, 7, c7), (7, 1, 192)], 1):
                d = cv(d, f"{m}_tower_1_conv_{i}", co, kh, kw, 1, kh // 2, kw // 2)
            x = torch.cat([cv(x, f"{m}_conv", 192, 1, 1), cv(a, f"{m}_tower_conv_2", 192, 1, 7, 1, 0, 3), d,
                           cv(ap(x), f"{m}_tower_2_conv", 192, 1, 1)], 1)  # fmt: skip
        d = cv(cv(cv(x, "mixed_8_tower_1_conv", 192, 1, 1), "mixed_8_tower_1_conv_1", 192, 7, 1, 1, 3, 0),
               "mixed_8_tower_1_conv_2", 192, 1, 7, 1, 0, 3)  # fmt: skip
        x = torch.cat([cv(cv(x, "mixed_8_tower_conv", 192, 1, 1), "mixed_8_tower_conv_1", 320, 3, 3, 2),
                       cv(d, "mixed_8_tower_1_conv_3", 192, 3, 3, 2), mp(x)], 1)  # fmt: skip
        for m, pool in (("mixed_9", ap), ("mixed_10", lambda z: mp(z, 1, 1))):
            a = cv(x, f"{m}_tower_conv", 384, 1, 1)
            d = cv(cv(x, f"{m}_tower_1_conv", 448, 1, 1), f"{m}_tower_1_conv_1", 384, 3, 3, 1, 1, 1)
            x = torch.cat([
                cv(x, f"{m}_conv", 320, 1, 1),
                cv(a, f"{m}_tower_mixed_conv", 384, 3, 1, 1, 1, 0), cv(a, f"{m}_tower_mixed_conv_1", 384, 1, 3, 1, 0, 1),
                cv(d, f"{m}_tower_1_mixed_conv", 384, 3, 1, 1, 1, 0), cv(d, f"{m}_tower_1_mixed_conv_1", 384, 1, 3, 1, 0, 1),
                cv(pool(x), f"{m}_tower_2_conv", 192, 1, 1)], 1)  # fmt: skip
        return x.mean((2, 3))  # top_cls_global_pool (6x6 at 229); top_cls_fc -> Dropout (new_fc outside)


def _checkpoint_layout(sd):
    """DataParallel(VideoModel) state dict under PyTorch >= 0.4.1: ``module.base_model.`` and a
    ``num_batches_tracked`` per BN."""
    out = {"module.base_model." + k: v.float() for k, v in sd.items()}
    for k in [k for k in out if k.endswith(".running_mean")]:
        out[k.replace(".running_mean", ".num_batches_tracked")] = torch.full((), 100, device=out[k].device)
    return out


def _video_reference(ref, x, fc_w, fc_b):
    """Official VideoModel: base_model on (B*T, 3, H, W), new_fc, average over the T frames."""
    b, c, t, h, w = x.shape
    feats = ref(x.transpose(1, 2).reshape(b * t, c, h, w))
    return F.linear(feats, fc_w, fc_b).view(b, t, -1).mean(1)


@pytest.mark.parametrize("gsm", [True, False])
def test_official_gsm_checkpoint_converts_and_matches_yaml_network(tmp_path, gsm):
    t, name = 2, "test_gsm_inceptionv3" if gsm else "test_tsn_inceptionv3"
    ref = _OfficialGSMInceptionV3(div=8, num_frames=t, gsm=gsm)
    x = torch.randn(2, 3, t, 75, 75, dtype=torch.double) * 40
    ref(x[:1].transpose(1, 2).reshape(t, 3, 75, 75))  # creates the official tensors
    assert len(ref.sd) == 94 * 6 + (10 * 6 if gsm else 0)  # conv weight, bias; BN 4 tensors
    fc_w = torch.randn(10, 256, dtype=torch.double) * 0.05
    fc_b = torch.randn(10, dtype=torch.double)
    sd = _checkpoint_layout(ref.sd)
    sd.update({"module.new_fc.weight": fc_w.float(), "module.new_fc.bias": fc_b.float()})
    torch.save({"epoch": 1, "arch": "InceptionV3", "state_dict": sd, "best_prec1": 0.0}, tmp_path / "gsm.pth")
    model = load_checkpoint(create_model(name, num_frames=t), tmp_path / "gsm.pth").double().eval()
    with torch.no_grad():
        got, expected = model(x), _video_reference(ref, x, fc_w, fc_b)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert (expected[0] - expected[1]).abs().max() > 1e-2 * expected.abs().max()  # not a constant


def test_full_size_official_keys_and_gsm_positions():
    ref = _OfficialGSMInceptionV3(div=1, num_frames=8)
    with torch.device("meta"):
        ref(torch.zeros(8, 3, 229, 229, dtype=torch.double))
        m = create_model("gsm_inceptionv3")
    sd = _checkpoint_layout(ref.sd)
    sd.update({"module.new_fc.weight": m.fc.weight, "module.new_fc.bias": m.fc.bias})
    assert sd["module.base_model.gsm_mixed_conv_Conv2D.conv3D.weight"].shape == (2, 32, 3, 3, 3)
    assert sd["module.base_model.mixed_4_tower_conv_1_Conv2D.weight"].shape == (128, 128, 7, 1)
    load_state_dict_strict(m, convert_state_dict(m, sd))
    gsm = [
        n.removeprefix("backbone.").removesuffix(".temporal")
        for n, x in m.named_modules()
        if isinstance(x, GateShift)
    ]
    assert tuple(gsm) == GSM_POSITIONS and "Mixed_6d" not in "".join(gsm)


def test_torchvision_variant_size_and_imagenet_file(tmp_path):
    # torchvision documents inception_v3 at 27,161,264 params with its auxiliary head (3,326,696) and
    # 5.71 GFLOPS (GMACs) at 299
    tv = InceptionV3(num_classes=1000, variant="torchvision")
    assert sum(p.numel() for p in tv.parameters()) == 27_161_264 - 3_326_696
    r = model_complexity("tsn_inceptionv3", variant="torchvision", num_frames=1, input_size=299)
    assert abs((r.gmacs - 2048 * 174 / 1e9) / 5.713 - 1) < 0.002
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_(0, 0.05)
    sd = dict(tv.state_dict())
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)  # torchvision files carry the aux head
    torch.save(sd, tmp_path / "inception_v3_google.pth")
    m = create_model("tsn_inceptionv3", variant="torchvision", num_classes=5)
    load_checkpoint(m, tmp_path / "inception_v3_google.pth")
    frame = torch.randn(1, 3, 107, 107)
    torch.testing.assert_close(m.eval().backbone.forward_features(frame), tv.eval().forward_features(frame))
    with pytest.raises(CheckpointError, match=r"missing non-temporal keys.*variant='torchvision'"):
        load_checkpoint(create_model("tsn_inceptionv3", num_classes=5), tmp_path / "inception_v3_google.pth")


def test_cuhk_imagenet_file_into_gsm(tmp_path):
    """The Caffe ImageNet file (official ids, (1, C) BN tensors, ``top_cls_fc``) initialises GSM; only
    the GSM modules stay at their initialisation."""
    ref = _OfficialGSMInceptionV3(div=8, num_frames=1, gsm=False)
    ref(torch.zeros(1, 3, 75, 75, dtype=torch.double))
    sd = {k: (v.view(1, -1) if v.dim() == 1 else v).float() for k, v in ref.sd.items()}
    sd.update({"top_cls_fc.weight": torch.zeros(1000, 256), "top_cls_fc.bias": torch.zeros(1000)})
    m = create_model("test_gsm_inceptionv3", num_frames=1)
    missing = load_image_weights(m, sd)
    assert missing and all(".temporal." in k for k in missing) and len(missing) == 10 * 6
    torch.save(sd, tmp_path / "inceptionv3-cuhk.pth")  # what `kinetix convert` reads
    tsn = load_checkpoint(
        create_model("test_tsn_inceptionv3", num_frames=1), tmp_path / "inceptionv3-cuhk.pth"
    )
    x = torch.randn(1, 3, 75, 75, dtype=torch.double) * 40
    torch.testing.assert_close(tsn.double().eval().backbone.forward_features(x).mean((2, 3)), ref(x))


def test_gsm_overhead_and_paper_figures():
    base, gsm = model_complexity("tsn_inceptionv3"), model_complexity("gsm_inceptionv3")
    assert gsm.params - base.params == 48_276  # 10 modules x (27C + 2 + 2C), C = 64x4, 192x4, 320x2
    assert abs((gsm.gmacs - base.gmacs) * 1e3 / 8 - 9.17) < 0.01  # M MACs per frame at 229
    # GSM paper (Something-V1, 174 classes, 8 frames): about 22.2 M params and 26.9 G(MAC)s
    assert abs(gsm.params / 22.2e6 - 1) < 0.005 and abs(gsm.gmacs / 26.9 - 1) < 0.01
    assert abs(model_complexity("gsm_inceptionv3", num_frames=16).gmacs / 53.7 - 1) < 0.01


def test_tiny_variant_trains_and_rejects_bad_options():
    m = create_model("test_gsm_inceptionv3")
    assert m.pretrained_cfg.channel_order == "BGR" and m.pretrained_cfg.input_size == 75
    x = torch.randn(1, 3, 8, 75, 75) * 40
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError, match="variant"):
        InceptionV3(variant="caffe")


def test_causal_gsm_inceptionv3_streams_frame_by_frame():
    model = create_model("test_gsm_inceptionv3", causal=True, num_frames=4)
    for m in model.modules():
        if isinstance(m, GateShift):
            torch.nn.init.normal_(m.conv3D.weight, std=0.3)
    clip = torch.randn(2, 3, 4, 75, 75) * 40
    model.train()
    with torch.no_grad():
        model(clip)  # BN statistics from the clip
    model.eval()
    with torch.no_grad():
        expected = model.forward_frames(clip)
    stream = StreamingRecognizer(model)
    got = torch.stack([stream(clip[:, :, t]) for t in range(4)], 1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        StreamingRecognizer(create_model("test_gsm_inceptionv3"))
