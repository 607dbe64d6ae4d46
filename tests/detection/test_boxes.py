"""Box ops vs direct per-pair computations."""

import math

import torch

from kinetix.detection.boxes import (
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    decode_deltas,
    encode_deltas,
    extend_boxes,
    generalized_box_iou,
    xyxy_to_cxcywh,
)


def _rand_boxes(n, g):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 1], -1)


def _pair(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (hull - union) / hull


def test_iou_and_giou_vs_pairwise_loop():
    g = torch.Generator().manual_seed(0)
    a, b = _rand_boxes(6, g), _rand_boxes(4, g)
    want = torch.tensor([[_pair(x.tolist(), y.tolist()) for y in b] for x in a], dtype=torch.float64)
    torch.testing.assert_close(box_iou(a, b), want[..., 0])
    torch.testing.assert_close(generalized_box_iou(a, b), want[..., 1])
    torch.testing.assert_close(torch.diag(generalized_box_iou(a, a)), torch.ones(6, dtype=torch.float64))
    # disjoint boxes far apart: GIoU tends to -1
    far = torch.tensor([[0.0, 0, 1, 1], [1000.0, 1000, 1001, 1001]])
    assert generalized_box_iou(far[:1], far[1:]).item() < -0.99


def test_conversions_and_deltas_round_trip():
    g = torch.Generator().manual_seed(1)
    src, dst = _rand_boxes(7, g), _rand_boxes(7, g)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(src)), src)
    d = encode_deltas(src, dst)
    torch.testing.assert_close(decode_deltas(d, src), dst)
    # hand value: src (0,0,10,10) -> dst (5,0,15,20): dx = 2·5/10, dy = 2·5/10, dw = 0, dh = log 2
    d = encode_deltas(torch.tensor([0.0, 0, 10, 10]), torch.tensor([5.0, 0, 15, 20]))
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0, 0.0, math.log(2)]))
    # huge dw is clamped at log(1e5/16)
    out = decode_deltas(torch.tensor([0.0, 0, 100, 0]), torch.tensor([0.0, 0, 16, 16]))
    torch.testing.assert_close(out[2] - out[0], torch.tensor(1e5), rtol=1e-5, atol=0)


def test_clip_and_extend():
    b = torch.tensor([[10.0, 20, 60, 120], [-5, -5, 300, 10]])
    torch.testing.assert_close(clip_boxes(b, 100, 200), torch.tensor([[10.0, 20, 60, 100], [0, 0, 200, 10]]))
    # official EVADRoIHead.bbox_extension: w = 60 − 10 + 1 = 51, h = 120 − 20 + 1 = 101; pad 0.2·51 = 10.2
    # left/right and 0.1·101 = 10.1 top/bottom, then clip to [0, 255] × [0, 127] (clip_boxes_tensor)
    ext = extend_boxes(b[:1], (0.4, 0.2), height=128, width=256)
    torch.testing.assert_close(ext, torch.tensor([[0.0, 9.9, 70.2, 127]]))
