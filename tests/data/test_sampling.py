"""Sampling functions against the official TSN/TSM formulas, written out independently here."""

from __future__ import annotations

import numpy as np
import pytest

from kinetix.data.sampling import (
    dense_indices,
    keyframe_indices,
    multiview_indices,
    segment_indices,
    uniform_indices,
)

LENGTHS = [1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 257, 300]


def _tsn_test_official(num_frames_video, num_segments):
    """TSM ops/dataset.py _get_test_indices (new_length=1), 1-based -> 0-based."""
    tick = (num_frames_video - 1 + 1) / float(num_segments)
    offsets = np.array([int(tick / 2.0 + tick * x) for x in range(num_segments)])
    return offsets + 1 - 1


def _tsn_twice_official(num_frames_video, num_segments):
    tick = (num_frames_video - 1 + 1) / float(num_segments)
    return np.array(
        [int(tick / 2.0 + tick * x) for x in range(num_segments)]
        + [int(tick * x) for x in range(num_segments)]
    )


def _tsm_dense_test_official(num_frames_video, num_segments, num_clips=10):
    """TSM dense test: 64-frame window, stride 64 // T, starts linspace(0, sample_pos - 1, 10)."""
    t_stride = 64 // num_segments
    sample_pos = max(1, 1 + num_frames_video - 64)
    starts = np.linspace(0, sample_pos - 1, num=num_clips, dtype=int)
    return np.array(
        [[(idx * t_stride + s) % num_frames_video for idx in range(num_segments)] for s in starts]
    )


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("t", [1, 3, 8, 16])
def test_segment_test_and_twice_match_official(n, t):
    np.testing.assert_array_equal(segment_indices(n, t, "test"), _tsn_test_official(n, t))
    twice = segment_indices(n, t, "twice")
    assert twice.shape == (2, t) and twice.dtype == np.int64
    np.testing.assert_array_equal(twice.reshape(-1), _tsn_twice_official(n, t))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("t", [1, 8, 16])
def test_segment_train_one_frame_per_segment(n, t):
    rng = np.random.default_rng(n * 100 + t)
    draws = np.stack([segment_indices(n, t, "train", rng) for _ in range(200)])  # (200, T)
    assert draws.dtype == np.int64 and draws.min() >= 0 and draws.max() < n
    avg = n // t
    if avg > 0:  # official: offsets = arange(T) * avg + randint(avg)
        seg = draws - np.arange(t) * avg
        assert seg.min() >= 0 and seg.max() < avg
        if 1 < avg <= 20:  # every position inside a segment gets drawn
            assert set(np.unique(seg)) == set(range(avg))
    else:  # shorter than T: sorted draw over the whole video (stretch), never an error
        assert (np.diff(draws, axis=1) >= 0).all()


def test_segment_determinism_and_validation():
    a = segment_indices(100, 8, "train", np.random.default_rng(7))
    b = segment_indices(100, 8, "train", np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="mode"):
        segment_indices(100, 8, "val")
    with pytest.raises(ValueError, match="video_frames"):
        segment_indices(0, 8)


@pytest.mark.parametrize("n", [10, 63, 64, 65, 100, 300])
@pytest.mark.parametrize("t", [8, 16])
def test_dense_test_matches_tsm_dense_sampling(n, t):
    out = dense_indices(n, t, 64 // t, "test", num_clips=10)
    assert out.shape == (10, t)
    np.testing.assert_array_equal(out, _tsm_dense_test_official(n, t))


@pytest.mark.parametrize("n", [1, 10, 63, 64, 65, 100, 300])
def test_dense_train_clips_and_loop_policy(n):
    t, interval = 16, 4
    rng = np.random.default_rng(n)
    clips = np.stack([dense_indices(n, t, interval, "train", rng=rng) for _ in range(300)])  # (300, 16)
    assert clips.shape == (300, t) and clips.min() >= 0 and clips.max() < n
    starts = clips[:, 0]
    np.testing.assert_array_equal(clips, (starts[:, None] + np.arange(t) * interval) % n)  # loop
    last_start = max(0, n - t * interval)
    assert starts.max() <= last_start
    if 0 < last_start < 50:  # every start is reachable
        assert set(starts.tolist()) == set(range(last_start + 1))


def test_dense_single_test_clip_is_centred():
    out = dense_indices(300, 16, 4, "test")
    assert out.shape == (16,)
    assert out[0] == (300 - 64) // 2 and np.all(np.diff(out) == 4)
    # the clip covers the middle of the video: its centre is within one interval of the video's
    assert abs((out[0] + out[-1]) / 2 - 299 / 2) <= 4


def test_uniform_indices():
    np.testing.assert_array_equal(uniform_indices(100, 5), [0, 24, 49, 74, 99])
    np.testing.assert_array_equal(uniform_indices(3, 6), [0, 0, 0, 1, 1, 2])  # stretch
    out = uniform_indices(1000, 32)
    assert out[0] == 0 and out[-1] == 999 and np.all(np.diff(out) > 0)


@pytest.mark.parametrize("n", [5, 64, 301])
def test_multiview_segment_views(n):
    t, clips = 8, 4
    views = multiview_indices(n, t, clips, "segment")
    assert views.shape == (clips, t) and views.min() >= 0 and views.max() < n
    tick = n / t
    expected = np.array([[int(tick * x + tick * (c + 0.5) / clips) for x in range(t)] for c in range(clips)])
    np.testing.assert_array_equal(views, expected)
    np.testing.assert_array_equal(multiview_indices(n, t, 1, "segment")[0], segment_indices(n, t, "test"))
    if n >= t * clips:  # views are distinct and interleave inside each segment
        assert (np.diff(views, axis=0) > 0).all()


def test_multiview_dense_views():
    views = multiview_indices(300, 8, 3, "dense", interval=8)
    assert views.shape == (3, 8)
    np.testing.assert_array_equal(views[:, 0], [0, (300 - 64) // 2, 300 - 64])
    assert multiview_indices(300, 8, 1, "dense", interval=8).shape == (1, 8)


def test_keyframe_indices_centred_and_clamped():
    out = keyframe_indices(90, 16, 4, 300)
    np.testing.assert_array_equal(out, 90 + (np.arange(16) - 8) * 4)
    assert out[8] == 90  # the keyframe sits at position T // 2
    edge = keyframe_indices(5, 16, 4, 60)
    assert edge.min() == 0 and edge.max() == 5 + 7 * 4
    assert (edge[:7] == 0).all()  # clamped at the start, not wrapped
    np.testing.assert_array_equal(keyframe_indices(58, 4, 2, 60), [54, 56, 58, 59])
