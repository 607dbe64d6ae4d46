"""SIFA-Transformer, the paper's reading (``sifa_offsets="learned"``, ``sifa_last_frame="self"``)
against a direct per-pixel loop (deformable taps of the key frame, offsets from its motion saliency,
bilinear sampling with zero padding, channel-mean weights), gradients, and the released default."""

import pytest
import torch
import torch.nn.functional as F

from kinetix.errors import ConfigError
from kinetix.models import create_model
from kinetix.models.swin import InterFrameResidual, relative_position_index, window_layout

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _bilinear(img, y, x):
    """img (H, W, C) at real (y, x): 0 outside (-1, H) x (-1, W), out-of-image corners count 0."""
    h, w, c = img.shape
    out = img.new_zeros(c)
    if not (-1 < y < h and -1 < x < w):
        return out
    y0, x0 = int(torch.floor(y)), int(torch.floor(x))
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * img[yy, xx]
    return out


def _paper_sifa_loop(f, conv_w, k, last_self):
    """f (B, T, H, W, C). Query frame t at integer p attends to the k x k taps of key frame t+1
    (frame T-1 itself for the last query when ``last_self``; nothing otherwise), each tap moved by
    the offsets that a (1, 3, 3) conv predicts from the key frame's motion saliency
    sigmoid(f_t - f_{t-1}) f_t + f_t (f_{-1} := f_0)."""
    b_, t_, h, w, c = f.shape
    pad = k // 2
    f5 = f.permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
    prev = torch.cat([f5[:, :, :1], f5[:, :, :-1]], 2)
    sal = torch.sigmoid(f5 - prev) * f5 + f5
    off = (
        F.conv3d(sal, conv_w.unsqueeze(2), padding=(0, 1, 1)) if conv_w is not None else None
    )  # (B, 2k², T, H, W)
    agg = torch.zeros_like(f)
    for b in range(b_):
        for t in range(t_):
            key = t + 1 if t < t_ - 1 else (t if last_self else None)
            if key is None:
                continue
            for i in range(h):
                for j in range(w):
                    acc = f.new_zeros(c)
                    for kh in range(k):
                        for kw in range(k):
                            kk = kh * k + kw
                            dy = off[b, 2 * kk, key, i, j] if off is not None else 0.0
                            dx = off[b, 2 * kk + 1, key, i, j] if off is not None else 0.0
                            v = _bilinear(
                                f[b, key],
                                torch.as_tensor(i - pad + kh + dy),
                                torch.as_tensor(j - pad + kw + dx),
                            )
                            acc = acc + (f[b, t, i, j] * v).sum() / c * v
                    agg[b, t, i, j] = acc
    return agg


@pytest.mark.parametrize("offsets", ["zero", "learned"])
@pytest.mark.parametrize("last_frame", ["none", "self"])
def test_sifa_term_matches_direct_loop(offsets, last_frame):
    b, t, h, w, c = 1, 3, 4, 5, 6
    m = InterFrameResidual(c, 3, offsets=offsets, last_frame=last_frame).double()
    torch.nn.init.normal_(m.norm.weight)
    torch.nn.init.normal_(m.norm.bias)
    if m.conv_offset is not None:
        torch.nn.init.normal_(m.conv_offset.weight, std=0.3)
    x = torch.randn(b * t, h * w, c, dtype=torch.double)
    agg = _paper_sifa_loop(x.view(b, t, h, w, c), None if m.conv_offset is None else m.conv_offset.weight, 3,
                           last_frame == "self")  # fmt: skip
    expected = F.layer_norm(agg, (c,), m.norm.weight, m.norm.bias).view_as(x)
    torch.testing.assert_close(m(x, (t, h, w)), expected)
    last = agg[:, -1].abs().max()
    assert (last > 0) if last_frame == "self" else (last == 0)  # the last frame's own term (or none)


def test_learned_offsets_gradcheck():
    m = InterFrameResidual(4, 3, offsets="learned", last_frame="self").double()
    torch.nn.init.normal_(m.norm.weight)
    torch.nn.init.normal_(m.conv_offset.weight, std=0.3)  # non-integer sampling points (bilinear kinks)
    x = torch.randn(2 * 3, 3 * 3, 4, dtype=torch.double, requires_grad=True)
    w = m.conv_offset.weight

    def fn(x, w):
        return torch.func.functional_call(m, {"conv_offset.weight": w}, (x, (3, 3, 3)))

    assert torch.autograd.gradcheck(fn, (x, w.detach().clone().requires_grad_()), eps=1e-6, atol=1e-5)


def test_model_options_default_to_released_and_start_as_released():
    released = create_model("test_sifa_swin").eval()
    paper = create_model("test_sifa_swin", sifa_offsets="learned", sifa_last_frame="self").eval()
    sifa = [m for m in paper.modules() if isinstance(m, InterFrameResidual)]
    assert sifa and all(m.offsets == "learned" and m.last_frame == "self" for m in sifa)
    assert all(
        m.conv_offset is None and m.last_frame == "none"
        for m in released.modules()
        if isinstance(m, InterFrameResidual)
    )
    extra = set(paper.state_dict()) - set(released.state_dict())
    assert extra and all(k.endswith("temporal.conv_offset.weight") for k in extra)
    paper.load_state_dict({**paper.state_dict(), **released.state_dict()})
    x = torch.randn(1, 3, 8, 64, 64)
    torch.testing.assert_close(paper(x), released(x))  # zero-initialised SIFA terms: same function
    # learned offsets get gradients once the SIFA term is active
    for m in sifa:
        torch.nn.init.normal_(m.norm.weight)
    paper.train()
    paper(x).square().sum().backward()
    assert all(m.conv_offset.weight.grad.abs().sum() > 0 for m in sifa)
    with pytest.raises(ConfigError, match="offsets"):  # create_model reports a bad argument
        create_model("test_sifa_swin", sifa_offsets="deformable")


def test_training_after_a_first_call_under_inference_mode():
    """The cached window layouts must not be inference tensors (explain / deploy may run a Swin
    under ``torch.inference_mode()`` first)."""
    window_layout.cache_clear()
    relative_position_index.cache_clear()
    m = create_model("test_sifa_swin", sifa_offsets="learned")
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode():
        m.eval()(x)
    m.train()(x).sum().backward()
    assert m.head.weight.grad is not None
