"""RoIAlign vs a direct per-sample bilinear loop (the C++ kernel's logic) and vs analytic values."""

import math

import pytest
import torch

from kinetix.layers.roi_align import roi_align


def _bilinear(fm, y, x):
    """Detectron2/torchvision ``bilinear_interpolate`` on one (C, H, W) map, written out directly."""
    C, H, W = fm.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return torch.zeros(C, dtype=fm.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = math.floor(y), math.floor(x)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * fm[:, y0, x0] + hy * lx * fm[:, y0, x1] + ly * hx * fm[:, y1, x0] + ly * lx * fm[:, y1, x1]
    )


def _reference(features, boxes, out, scale, ratio, aligned):
    N, C = features.shape[:2]
    res = torch.zeros(N, boxes.shape[1], C, out, out, dtype=features.dtype)
    off = 0.5 if aligned else 0.0
    for n in range(N):
        for k in range(boxes.shape[1]):
            x1, y1, x2, y2 = (float(v) * scale - off for v in boxes[n, k])
            w, h = x2 - x1, y2 - y1
            if not aligned:
                w, h = max(w, 1.0), max(h, 1.0)
            bw, bh = w / out, h / out
            for i in range(out):
                for j in range(out):
                    acc = torch.zeros(C, dtype=features.dtype)
                    for a in range(ratio):
                        for b in range(ratio):
                            y = y1 + i * bh + (a + 0.5) * bh / ratio
                            x = x1 + j * bw + (b + 0.5) * bw / ratio
                            acc += _bilinear(features[n], y, x)
                    res[n, k, :, i, j] = acc / ratio**2
    return res


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2])
def test_matches_direct_loop(aligned, ratio):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 9, 11, dtype=torch.float64, generator=g)
    # image is 4x the map; boxes inside, crossing borders, tiny, and fully outside
    xy = torch.rand(2, 5, 2, dtype=torch.float64, generator=g) * torch.tensor([44.0, 36.0]) - 6
    wh = torch.rand(2, 5, 2, dtype=torch.float64, generator=g) * 25 + 0.2
    boxes = torch.cat([xy, xy + wh], -1)
    boxes[0, 0] = torch.tensor([-30.0, -30.0, -10.0, -10.0])  # completely outside -> zeros
    boxes[1, 1] = torch.tensor([40.0, 33.0, 60.0, 50.0])  # beyond the bottom-right corner
    got = roi_align(feats, boxes, 4, spatial_scale=0.25, sampling_ratio=ratio, aligned=aligned)
    want = _reference(feats, boxes, 4, 0.25, ratio, aligned)
    assert got.shape == (2, 5, 3, 4, 4)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert got[0, 0].abs().max() == 0


def test_linear_ramp_gives_bin_centre_values():
    """Bilinear sampling of a linear image is exact, and the samples are symmetric about each bin's
    centre, so every output equals the ramp at the bin centre (in half-pixel-corrected coordinates)."""
    H, W = 20, 30
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
    )
    ramp = (2.0 * xs - 3.0 * ys + 5.0)[None, None]  # (1, 1, H, W)
    box = torch.tensor([[[4.0, 3.0, 18.0, 13.5]]], dtype=torch.float64)
    out = roi_align(ramp, box, (5, 7), spatial_scale=1.0, sampling_ratio=2, aligned=True)[0, 0, 0]
    cy = 3.0 - 0.5 + (torch.arange(5, dtype=torch.float64) + 0.5) * 10.5 / 5
    cx = 4.0 - 0.5 + (torch.arange(7, dtype=torch.float64) + 0.5) * 14.0 / 7
    torch.testing.assert_close(out, 2.0 * cx[None, :] - 3.0 * cy[:, None] + 5.0, rtol=0, atol=1e-12)


def test_constant_map_and_gradient():
    feats = torch.full((1, 2, 8, 8), 3.0, requires_grad=True)
    box = torch.tensor([[[1.0, 1.0, 6.0, 7.0], [2.0, 0.5, 3.0, 4.0]]])
    out = roi_align(feats, box, 3)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))
    out.sum().backward()
    # every output bin distributes a total weight of 1 over the map
    torch.testing.assert_close(feats.grad.sum(), torch.tensor(2 * 2 * 9.0))


def test_rejects_adaptive_ratio():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4), 2, sampling_ratio=0)
