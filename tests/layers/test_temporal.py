"""Temporal layers against direct references (the official formulas, written as plain loops)."""

import pytest
import torch
import torch.nn.functional as F

from kinetix.layers.temporal import GateShift, TemporalShift, temporal_shift

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _tsm_reference(x, t, fold_div=8):
    """The official TSM shift (zeros_like + slice copies), as in ops/temporal_shift.py."""
    nt, c, h, w = x.shape
    x = x.view(nt // t, t, c, h, w)
    f = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :f] = x[:, 1:, :f]
    out[:, 1:, f : 2 * f] = x[:, :-1, f : 2 * f]
    out[:, :, 2 * f :] = x[:, :, 2 * f :]
    return out.view(nt, c, h, w)


@pytest.mark.parametrize("c,fold_div", [(16, 8), (20, 8), (12, 4)])
def test_shift_matches_official(c, fold_div):
    x = torch.randn(2 * 4, c, 3, 5)
    assert torch.equal(temporal_shift(x, 4, fold_div), _tsm_reference(x, 4, fold_div))


def test_shift_channel_order_and_zero_padding():
    t, c = 3, 8  # fold = 1: channel 0 from t+1, channel 1 from t-1
    x = torch.arange(t, dtype=torch.float).view(t, 1, 1, 1).expand(t, c, 1, 1).contiguous() + 1
    y = TemporalShift(c, t)(x)[:, :, 0, 0]
    assert y[:, 0].tolist() == [2, 3, 0] and y[:, 1].tolist() == [0, 1, 2] and y[:, 2].tolist() == [1, 2, 3]


def test_shift_channels_last_and_gradient_is_adjoint():
    x = torch.randn(6, 16, 4, 4).to(memory_format=torch.channels_last).requires_grad_()
    y = temporal_shift(x, 3)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, _tsm_reference(x.detach().contiguous(), 3))
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x2 = x.detach().contiguous().requires_grad_()
    (_tsm_reference(x2, 3) * g).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    assert torch.autograd.gradcheck(
        lambda a: temporal_shift(a, 3), torch.randn(6, 8, 2, 2, dtype=torch.double, requires_grad=True)
    )


def test_causal_shift_reads_only_the_past_and_steps_like_the_clip():
    t, c = 4, 16
    x = torch.randn(2 * t, c, 3, 3)
    layer = TemporalShift(c, t, causal=True)
    y = layer(x).view(2, t, c, 3, 3)
    xv = x.view(2, t, c, 3, 3)
    assert torch.equal(y[:, 1:, :2], xv[:, :-1, :2]) and torch.all(y[:, 0, :2] == 0)
    assert torch.equal(y[:, :, 2:], xv[:, :, 2:])
    cache = None
    for i in range(t):
        out, cache = layer.step(xv[:, i], cache)
        assert torch.equal(out, y[:, i])
    # changing a future frame never changes the past
    x2 = xv.clone()
    x2[:, -1] += 1
    assert torch.equal(layer(x2.view(-1, c, 3, 3)).view(2, t, c, 3, 3)[:, :-1], y[:, :-1])


def _gsm_reference(m, x, t):
    """Official gsmModule forward: permute to (B,C,T,H,W), Conv3d gate, shifts, interleave."""
    nt, c, h, w = x.shape
    b = nt // t
    x5 = x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
    gate = torch.tanh(m.conv3D(F.relu(m.bn(x5))))
    x1, x2 = x5[:, : c // 2], x5[:, c // 2 :]
    y1, y2 = gate[:, :1] * x1, gate[:, 1:] * x2
    r1, r2 = x1 - y1, x2 - y2
    y1 = torch.cat([y1[:, :, 1:], torch.zeros_like(y1[:, :, :1])], 2) + r1
    y2 = torch.cat([torch.zeros_like(y2[:, :, :1]), y2[:, :, :-1]], 2) + r2
    y1 = y1.view(b, 2, c // 4, t, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, c // 2, t, h, w)
    y2 = y2.view(b, 2, c // 4, t, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, c // 2, t, h, w)
    return torch.cat([y1, y2], 1).permute(0, 2, 1, 3, 4).reshape(nt, c, h, w)


@pytest.mark.parametrize("train", [False, True])
def test_gsm_matches_official_formula(train):
    t, c = 4, 16
    m = GateShift(c, t)
    torch.nn.init.normal_(m.conv3D.weight, std=0.3)
    torch.nn.init.normal_(m.conv3D.bias, std=0.3)
    m.bn.running_mean.normal_()
    m.train(train)
    x = torch.randn(2 * t, c, 5, 5)
    ref = GateShift(c, t)
    ref.load_state_dict(m.state_dict())
    ref.train(train)
    x2 = x.clone().requires_grad_()
    y, y_ref = m(x.requires_grad_()), _gsm_reference(ref, x2, t)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    if train:
        torch.testing.assert_close(m.bn.running_mean, ref.bn.running_mean)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        (y_ref * g).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.conv3D.weight.grad, ref.conv3D.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(m.bn.weight.grad, ref.bn.weight.grad, rtol=1e-4, atol=1e-4)


def test_gsm_zero_init_is_channel_interleave():
    x = torch.randn(8, 8, 2, 2)
    y = GateShift(8, 4)(x)
    perm = [0, 2, 1, 3, 4, 6, 5, 7]  # out 2j <- j, 2j+1 <- C/4 + j within each half
    assert torch.equal(y, x[:, perm])


def test_causal_gsm_steps_like_the_clip():
    t, c = 5, 8
    m = GateShift(c, t, causal=True).eval()
    torch.nn.init.normal_(m.conv3D.weight, std=0.3)
    x = torch.randn(2 * t, c, 3, 3)
    y = m(x).view(2, t, c, 3, 3)
    cache = None
    for i in range(t):
        out, cache = m.step(x.view(2, t, c, 3, 3)[:, i], cache)
        torch.testing.assert_close(out, y[:, i], rtol=1e-5, atol=1e-6)
    x2 = x.view(2, t, c, 3, 3).clone()
    x2[:, -1] += 1
    torch.testing.assert_close(m(x2.view(-1, c, 3, 3)).view(2, t, c, 3, 3)[:, :-1], y[:, :-1])


@pytest.mark.parametrize("causal", [False, True])
def test_inplace_inference_shift_equals_out_of_place_and_restores_input(causal):
    layer, conv = TemporalShift(16, 4, causal=causal), torch.nn.Conv2d(16, 8, 1)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(8, 16, 3, 3).contiguous(memory_format=fmt)
        x0 = x.clone()
        ref = conv(layer(x))
        with torch.no_grad():
            got = layer.apply_to(conv, x)
        torch.testing.assert_close(got, ref)
        assert torch.equal(x, x0)
