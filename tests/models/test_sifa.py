"""SIFA: the inter-frame attention op vs a direct loop over the CUDA kernels' formulas (values and
gradients), the released SIFA-Net structure (params, G blocks, dual head), ImageNet inflation."""

import pytest
import torch
import torch.nn.functional as F

from kinetix.errors import ConfigError
from kinetix.layers.temporal import InterFrameAttention, inter_frame_attention, motion_saliency
from kinetix.models import create_model
from kinetix.models.resnet import Bottleneck, ResNet, load_image_weights
from kinetix.models.sifa_net import GBottleneck

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


# ---------------------------------------------------------------------------------------------
# SIFA: a direct per-pixel loop over the CUDA kernels' formulas (def_cor, def_agg, block shifts)
# ---------------------------------------------------------------------------------------------


def _bilinear(img, y, x):
    """Caffe/DCN bilinear sample of img (C, H, W) at (y, x): 0 unless -1 < y < H and -1 < x < W,
    out-of-range corners contribute 0."""
    c, h, w = img.shape
    if not (-1 < y < h and -1 < x < w):
        return img.new_zeros(c)
    y0, x0 = int(torch.floor(y)), int(torch.floor(x))
    out = img.new_zeros(c)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * img[:, yy, xx]
    return out


def _sifa_loop(f, offset, k=3, dil=1):
    n, c, t, h, w = f.shape
    pad = (dil * (k - 1) + 1) // 2
    agg = torch.zeros_like(f)
    for b in range(n):
        for ti in range(t):  # def_cor / def_agg at index ti: query = frame max(ti-1, 0), keys = frame ti
            q_t = max(ti - 1, 0)
            for i in range(h):
                for j in range(w):
                    acc = f.new_zeros(c)
                    for kh in range(k):
                        for kw in range(k):
                            kk = kh * k + kw
                            y = i - pad + kh * dil + offset[b, 2 * kk, ti, i, j]
                            x = j - pad + kw * dil + offset[b, 2 * kk + 1, ti, i, j]
                            v = _bilinear(f[b, :, ti], y, x)
                            corr = (f[b, :, q_t, i, j] * v).sum() / c  # DefCorFixW weight 1/C
                            acc = acc + corr * v
                    agg[b, :, ti, i, j] = acc
    shifted = torch.zeros_like(agg)  # block: frame t <- agg[t+1], last frame masked
    shifted[:, :, :-1] = agg[:, :, 1:]
    return shifted


@pytest.mark.parametrize("k,dil", [(3, 1), (3, 2), (1, 1)])
def test_inter_frame_attention_matches_kernel_loop(k, dil):
    f = torch.randn(1, 3, 3, 4, 5, dtype=torch.double)
    offset = 1.5 * torch.randn(1, 2 * k * k, 3, 4, 5, dtype=torch.double)
    offset[0, 0, 1, 0, 0] = 3.0  # far outside the image: contributes zero
    torch.testing.assert_close(inter_frame_attention(f, offset, k, dil), _sifa_loop(f, offset, k, dil))


def test_inter_frame_attention_gradcheck():
    f = torch.randn(1, 2, 3, 3, 4, dtype=torch.double, requires_grad=True)
    # keep sampling points away from integer coordinates (bilinear kinks) for finite differences
    offset = (0.3 + 0.4 * torch.rand(1, 18, 3, 3, 4, dtype=torch.double)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, o: inter_frame_attention(a, o), (f, offset), eps=1e-6, atol=1e-5
    )


def test_sifa_module_zero_init_is_regular_grid_and_saliency():
    t, c = 3, 4
    m = InterFrameAttention(c, t)
    x = torch.randn(2 * t, c, 4, 4, dtype=torch.double)
    m.double()
    f = x.view(2, t, c, 4, 4).transpose(1, 2)
    expected = f + _sifa_loop(f, torch.zeros(2, 18, t, 4, 4, dtype=torch.double))
    torch.testing.assert_close(m(x), expected.transpose(1, 2).reshape(2 * t, c, 4, 4))
    prev = torch.cat([f[:, :, :1], f[:, :, :-1]], 2)
    torch.testing.assert_close(motion_saliency(f), torch.sigmoid(f - prev) * f + f)


def test_sifa_block_matches_released_formula():
    """Bottleneck with the SIFA slot == released DEFLocalTransBottleneck (written with cat shifts)."""
    t = 3
    blk = Bottleneck(16, 4, temporal=InterFrameAttention(4, t), position="conv2").double().eval()
    torch.nn.init.normal_(blk.temporal_out.conv_offset.weight, std=0.1)
    x = torch.randn(2 * t, 16, 4, 4, dtype=torch.double)
    out = F.relu(blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(x))))))
    f = out.view(2, t, 4, 4, 4).transpose(1, 2)  # (N, C, T, H, W)
    prev = torch.cat([f[:, :, :1], f[:, :, :-1]], 2)
    sal = torch.sigmoid(f - prev) * f + f
    w5 = blk.temporal_out.conv_offset.weight.unsqueeze(2)  # released Conv3d (O, I, 1, 3, 3)
    offset = F.conv3d(sal, w5, padding=(0, 1, 1))
    f = f + _sifa_loop(f, offset)
    expected = F.relu(blk.bn3(blk.conv3(f.transpose(1, 2).reshape(2 * t, 4, 4, 4))) + x)
    torch.testing.assert_close(blk(x), expected)


def test_gbottleneck_global_context():
    t = 2
    blk = GBottleneck(16, 4, num_frames=t).eval()
    torch.nn.init.normal_(blk.bn3.weight)
    x = torch.randn(2 * t, 16, 3, 3)
    out = blk.bn3(blk.conv3(F.relu(blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(x))))))))
    o5 = out.view(2, t, 16, 3, 3).transpose(1, 2)  # (N, C, T, H, W)
    gc = blk.fc2(F.relu(blk.fc1(F.adaptive_avg_pool3d(o5, 1).flatten(1))))
    expected = F.relu(o5 + x.view(2, t, 16, 3, 3).transpose(1, 2) + gc[:, :, None, None, None])
    torch.testing.assert_close(blk(x), expected.transpose(1, 2).reshape(2 * t, 16, 3, 3))


def test_released_structure_params():
    with torch.device("meta"):
        net, plain = create_model("sifa_r50"), create_model("sifa_r50_plain")
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / 43.0e6 - 1) < 0.01  # derived from the released code (reference §4.3)
    assert abs(sum(p.numel() for p in plain.parameters()) / 24.6e6 - 1) < 0.01
    assert net.conv1.weight.shape == (64, 3, 4, 7, 7)
    kinds = [type(b).__name__ + ("S" if getattr(b, "temporal_out", None) is not None and
             isinstance(b.temporal_out, InterFrameAttention) else "") for b in net.layer4_dual]  # fmt: skip
    assert kinds == ["GBottleneck", "BottleneckS", "GBottleneck"]
    assert net.layer4_dual[0].conv2.stride == (1, 1) and net.layer4[0].conv2.stride == (2, 2)
    assert net.layer4_dual[1].temporal_out.num_frames == 2 and net.layer4[1].temporal_out.num_frames == 4


def test_dual_head_scores_and_loss_outputs():
    m = create_model("test_sifa").eval()
    x = torch.randn(2, 3, 8, 64, 64)
    a, b = m.forward_dual(x)
    torch.testing.assert_close(m(x).exp(), (a.softmax(-1) + b.softmax(-1)) / 2)
    with pytest.raises(ConfigError, match="divisible by 8"):  # create_model reports a bad argument
        create_model("test_sifa", num_frames=4)


def test_image_weights_inflate_stem_and_dual_path():
    m = create_model("test_sifa").eval()
    image = ResNet(Bottleneck, (1, 2, 2, 2), base_width=8).state_dict()
    missing = load_image_weights(m, image)
    assert missing and all(
        ("fc1" in k or "fc2" in k or "conv_offset" in k or "fc_dual" in k) for k in missing
    )
    assert torch.equal(m.layer4_dual[1].conv2.weight, image["layer4.1.conv2.weight"])
    # a static clip through the inflated stem == the 2D ImageNet stem on the frame
    frame = torch.randn(1, 3, 32, 32)
    y3 = m.conv1(frame[:, :, None].expand(1, 3, 8, 32, 32))
    y2 = F.conv2d(frame, image["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(y3[:, :, 0], y2, rtol=1e-4, atol=1e-5)
