"""TSN / TSM / GSM recognisers: paper complexity, consensus, placement, partial BN."""

import pytest
import torch

from kinetix.layers.temporal import GateShift, TemporalShift
from kinetix.models import create_model
from kinetix.models._complexity import model_complexity

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _tsm_reference(x, t, fold_div=8):
    """The official TSM shift (zeros_like + slice copies)."""
    nt, c, h, w = x.shape
    x, f = x.view(nt // t, t, c, h, w), c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :f] = x[:, 1:, :f]
    out[:, 1:, f : 2 * f] = x[:, :-1, f : 2 * f]
    out[:, :, 2 * f :] = x[:, :, 2 * f :]
    return out.view(nt, c, h, w)


@pytest.mark.parametrize("name", ["tsn_r50", "tsm_r50"])
def test_r50_complexity_matches_paper(name):
    r8 = model_complexity(name, num_frames=8)
    assert abs(r8.gmacs / 32.9 - 1) < 0.01 and abs(r8.params / 24.33e6 - 1) < 0.01
    assert abs(model_complexity(name, num_frames=16).gmacs / 65.8 - 1) < 0.01


def test_gsm_bninception_overhead_and_params():
    base, gsm = model_complexity("tsn_bninception"), model_complexity("gsm_bninception")
    assert gsm.params - base.params == 51_060  # 10 modules x (27C + 2 + 2C)
    assert abs((gsm.gmacs - base.gmacs) * 1e3 / 8 - 10.58) < 0.05  # M MACs per frame
    assert abs(gsm.params / 10.5e6 - 1) < 0.01  # paper: ~10.5 M (SSv1, 174 classes)


def test_r101_shifts_every_other_block():
    with torch.device("meta"):
        m = create_model("tsm_r101")
    assert sum(isinstance(x, TemporalShift) for x in m.modules()) == 2 + 2 + 12 + 2
    assert isinstance(m.backbone.layer3[0].temporal_in, TemporalShift)
    assert not isinstance(m.backbone.layer3[1].temporal_in, TemporalShift)


def test_tsn_is_average_of_independent_frame_logits():
    m = create_model("test_tsn").eval()
    torch.nn.init.normal_(m.fc.weight, std=0.1)  # O(1) logits (the TSN init, std 0.001, gives ~1e-3)
    x = torch.randn(2, 3, 8, 64, 64)
    per_frame = torch.stack([m.fc(m.backbone.forward_features(x[:, :, t]).mean((2, 3))) for t in range(8)], 1)
    torch.testing.assert_close(m(x), per_frame.mean(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.forward_frames(x), per_frame, rtol=1e-4, atol=1e-6)


def test_tsm_equals_tsn_with_official_shift_hooks():
    """TSM == the TSN backbone with the official shift applied to each block's conv1 input."""
    tsm, tsn = create_model("test_tsm").eval(), create_model("test_tsn").eval()
    torch.nn.init.normal_(tsm.fc.weight, std=0.1)
    assert tsn.state_dict().keys() == tsm.state_dict().keys()  # same backbone size
    tsn.load_state_dict(tsm.state_dict())
    for blk in [
        b for layer in ("layer1", "layer2", "layer3", "layer4") for b in getattr(tsn.backbone, layer)
    ]:
        blk.conv1.register_forward_pre_hook(lambda mod, args: (_tsm_reference(args[0], 8),))
    x = torch.randn(2, 3, 8, 64, 64)
    torch.testing.assert_close(tsm(x), tsn(x), rtol=1e-4, atol=1e-6)
    plain = create_model("test_tsn").eval()
    plain.load_state_dict(tsm.state_dict())
    diff = (tsm.forward_frames(x) - plain.forward_frames(x)).abs().max()
    assert diff > 1e-2 * tsm.forward_frames(x).abs().max()  # the shift matters


def test_temporal_pool_and_channels_last():
    m = create_model("test_tsm", temporal_pool=True).eval()
    x = torch.randn(1, 3, 8, 64, 64)
    assert m.forward_frames(x).shape == (1, 4, 10)
    cl = create_model("test_tsm", channels_last=True).eval()
    ref = create_model("test_tsm").eval()
    ref.load_state_dict(cl.state_dict())
    torch.testing.assert_close(cl(x), ref(x), rtol=1e-4, atol=1e-5)


def test_partial_bn_freezes_all_but_first_bn():
    m = create_model("test_tsn", partial_bn=True).train()
    bns = [b for b in m.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert bns[0].training and bns[0].weight.requires_grad
    assert not any(b.training or b.weight.requires_grad for b in bns[1:])
    before = bns[1].running_mean.clone()
    m(torch.randn(1, 3, 8, 64, 64))
    assert torch.equal(bns[1].running_mean, before) and bns[0].running_mean.abs().sum() > 0


def test_api_and_gsm_variants():
    m = create_model("test_gsm", num_classes=5)
    assert sum(isinstance(x, GateShift) for x in m.modules()) == 4
    assert m(torch.randn(1, 3, 8, 64, 64)).shape == (1, 5)
    m.reset_classifier(7)
    assert m.get_classifier().out_features == 7
    nwd = m.no_weight_decay()
    assert "fc.bias" in nwd and "backbone.bn1.weight" in nwd and "fc.weight" not in nwd
    with torch.device("meta"):
        g = create_model("gsm_r50")
    assert sum(isinstance(x, GateShift) for x in g.modules()) == 16


def test_inference_fast_path_equals_autograd_path():
    m = create_model("test_tsm").eval()
    x = torch.randn(2, 3, 8, 64, 64)
    ref = m(x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref)


def test_bninception_image_weights():
    from kinetix.errors import CheckpointError
    from kinetix.models.bninception import BNInception
    from kinetix.models.resnet import load_image_weights

    with torch.device("meta"):
        image = BNInception(num_classes=1000).state_dict()
        image["conv1_7x7_s2_bn.weight"] = image["conv1_7x7_s2_bn.weight"].view(1, 64)  # Caffe (1, C)
        assert load_image_weights(create_model("tsn_bninception"), image) == []
        missing = load_image_weights(create_model("gsm_bninception"), image)
        assert len(missing) == 10 * 6 and all(k.startswith("gsm_") for k in missing)  # conv3D w/b + bn (4)
        del image["inception_4d_1x1.bias"]
        with pytest.raises(CheckpointError, match=r"inception_4d_1x1\.bias"):
            load_image_weights(create_model("gsm_bninception"), image)


@pytest.mark.parametrize("name,size", [("test_gsm", 64), ("test_tsm_nl", 64), ("test_gsm_inceptionv3", 75)])
def test_channels_last_with_5d_temporal_weights(name, size):
    """GSM gates and non-local projections are Conv3d (5-D weights): channels_last converts only
    the 2-D convolutions and gives the same logits."""
    a = create_model(name).eval()
    for m in a.modules():
        if isinstance(m, GateShift):
            torch.nn.init.normal_(m.conv3D.weight, std=0.2)
    torch.nn.init.normal_(a.fc.weight, std=0.5)
    b = create_model(name, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    assert b.backbone.state_dict()[
        next(k for k, v in b.backbone.state_dict().items() if v.dim() == 4)
    ].is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, size, size)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-4)
