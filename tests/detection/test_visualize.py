"""Kept-token maps and drawing."""

import math

import numpy as np
import torch

from kinetix.detection.visualize import draw_detections, kept_token_mask, plot_kept_tokens
from kinetix.models import create_model


def test_kept_token_mask_and_png(tmp_path):
    m = create_model("test_evad", keep_rate=0.7).eval()
    clip = torch.randn(1, 3, 8, 64, 96)
    mask = kept_token_mask(m, clip)
    t, h, w = 4, 4, 6
    assert mask.shape == (t, h, w) and mask[t // 2].all()  # keyframe slice fully kept
    n = t * h * w
    for _ in range(2):
        n = math.ceil(0.7 * n)
    assert int(mask.sum()) == n
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 96, 3), dtype=np.uint8)
    png = plot_kept_tokens(frames, mask, tmp_path / "kept.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    big = np.repeat(np.repeat(frames, 3, 1), 3, 2)  # the original video's size, not the model input's
    assert plot_kept_tokens(big, mask, tmp_path / "big.png").read_bytes()[:4] == b"\x89PNG"


def test_draw_detections_marks_the_box_edges():
    frame = np.zeros((40, 60, 3), np.uint8)
    out = draw_detections(frame, [[10, 15, 30, 35]], ["wave 0.90"])
    assert out.shape == frame.shape and out[25, 10].any() and out[25, 30].any()  # left / right edges
    assert not out[25, 20].any()  # inside stays untouched
    assert not frame.any()  # the input is not modified
