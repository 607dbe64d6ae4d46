"""ResNet backbone: torchvision layout, temporal slots, ImageNet weight loading."""

import pytest
import torch

from kinetix.errors import CheckpointError
from kinetix.layers.temporal import GateShift, TemporalShift
from kinetix.models.resnet import BasicBlock, Bottleneck, ResNet, TemporalMaxPool, load_image_weights, resnet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.mark.parametrize(
    "depth,params", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)]
)
def test_param_counts_match_torchvision(depth, params):
    with torch.device("meta"):
        m = resnet(depth)
    assert sum(p.numel() for p in m.parameters()) == params


def test_torchvision_key_names():
    with torch.device("meta"):
        sd = resnet(50).state_dict()
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
              "layer3.5.conv3.weight", "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"]:  # fmt: skip
        assert k in sd
    assert len(sd) == 320  # torchvision resnet50().state_dict() has 320 entries


def _tiny(**kw):
    return ResNet(BasicBlock, (1, 1, 1, 1), num_classes=0, num_frames=4, base_width=8, **kw)


def test_temporal_slots_add_keys_only_in_temporal_layers():
    plain = set(_tiny().state_dict())
    tsm = _tiny(temporal=TemporalShift)
    assert set(tsm.state_dict()) == plain
    assert sum(isinstance(m, TemporalShift) for m in tsm.modules()) == 4
    gsm = ResNet(Bottleneck, (1, 1, 1, 1), num_classes=0, num_frames=4, base_width=8,
                 temporal=GateShift, temporal_position="conv1")  # fmt: skip
    plain_b = set(ResNet(Bottleneck, (1, 1, 1, 1), num_classes=0, base_width=8).state_dict())
    extra = set(gsm.state_dict()) - plain_b
    assert extra and all(".temporal_mid." in k for k in extra)
    assert gsm.layer2[0].temporal_mid.channels == 16  # GSM sees the conv1 output (width)


def test_block_slot_shifts_identity_too():
    x = torch.randn(8, 8, 16, 16)
    res = _tiny(temporal=TemporalShift).eval()
    blk = _tiny(temporal=TemporalShift, temporal_position="block").eval()
    blk.load_state_dict(res.state_dict())
    b = blk.layer1[0]
    b.conv1.weight.data.zero_()  # residual branch -> bn(0); output = relu(bn2(0) + shifted x)
    b.bn2.bias.data.zero_()
    y = b(x)
    assert torch.allclose(y, torch.relu(TemporalShift(8, 4)(x)))


# Official TSM (mit-han-lab/temporal-shift-module ``ops/temporal_shift.py``): ``make_temporal_pool`` wraps
# ``net.layer2`` in ``TemporalPool``, whose forward max-pools the (n, c, t, h, w) view over time with
# ``F.max_pool3d(kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))`` before running layer2;
# ``make_temporal_shift(..., temporal_pool=True)`` gives layers 2-4 n_segment // 2 frames.
def _pool_reference(x, T):
    """Frame j of the output = elementwise max over input frames 2j-1, 2j, 2j+1 that exist."""
    B = x.shape[0] // T
    v = x.view(B, T, *x.shape[1:])
    out = [torch.stack([v[:, f] for f in (2 * j - 1, 2 * j, 2 * j + 1) if 0 <= f < T]).amax(0)
           for j in range((T + 1) // 2)]  # fmt: skip
    return torch.stack(out, 1).flatten(0, 1)  # (B * ceil(T/2), C, H, W)


@pytest.mark.parametrize("T", [8, 4, 5])
def test_temporal_max_pool_values(T):
    x = torch.randn(3 * T, 4, 2, 3)
    y = TemporalMaxPool(T)(x)
    torch.testing.assert_close(y, _pool_reference(x, T), rtol=0, atol=0)


def test_temporal_pool_sits_before_layer2_and_halves_frames():
    m = _tiny(temporal=TemporalShift, temporal_pool=True).eval()
    assert m.layer1[0].temporal_in.num_frames == 4
    assert all(b.temporal_in.num_frames == 2 for layer in (m.layer2, m.layer3, m.layer4) for b in layer)
    seen = {}
    m.layer1.register_forward_hook(lambda mod, args, out: seen.update(layer1=out) or None)
    m.layer2.register_forward_pre_hook(lambda mod, args: seen.update(layer2=args[0]) or None)
    x = torch.randn(2 * 4, 3, 32, 32)
    y = m.forward_features(x)
    torch.testing.assert_close(seen["layer2"], _pool_reference(seen["layer1"], 4), rtol=0, atol=0)
    torch.testing.assert_close(y, m.layer4(m.layer3(m.layer2(seen["layer2"]))))
    assert y.shape[0] == 2 * 2


def test_channels_last_matches():
    m = _tiny(temporal=TemporalShift).eval()
    x = torch.randn(8, 3, 32, 32)
    y = m.forward_features(x)
    m2 = _tiny(temporal=TemporalShift).eval()
    m2.load_state_dict(m.state_dict())
    m2.to(memory_format=torch.channels_last)
    y2 = m2.forward_features(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, y2, rtol=1e-4, atol=1e-5)


def test_load_image_weights_strict_and_temporal_only():
    image = ResNet(Bottleneck, (1, 1, 1, 1), num_classes=1000, base_width=8).state_dict()
    gsm = ResNet(Bottleneck, (1, 1, 1, 1), num_classes=0, num_frames=4, base_width=8,
                 temporal=GateShift, temporal_position="conv1")  # fmt: skip
    missing = load_image_weights(gsm, image)
    assert missing and all(".temporal_mid." in k for k in missing)
    assert torch.equal(gsm.layer3[0].conv2.weight, image["layer3.0.conv2.weight"])
    broken = {k: v for k, v in image.items() if k != "layer2.0.bn1.weight"}
    with pytest.raises(CheckpointError, match=r"missing non-temporal keys \['layer2.0.bn1.weight'\]"):
        load_image_weights(gsm, broken)
    r18 = ResNet(BasicBlock, (1, 1, 1, 1), base_width=8).state_dict()
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_image_weights(gsm, r18)


def test_small_input_stem_keeps_resolution():
    # CIFAR-style stem: 3x3 stride 1, no max-pool -> layer4 at 1/8 of the input (1/32 otherwise)
    x = torch.randn(2, 3, 32, 32)
    for small, side in ((True, 4), (False, 1)):
        net = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=0, base_width=8, small_input=small).eval()
        feats = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        assert feats.shape[-2:] == (side, side)
    assert net.conv1.kernel_size == (7, 7)
