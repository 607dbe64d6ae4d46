"""VideoReader / FrameFolderReader against a plain sequential PyAV decode of real files."""

from __future__ import annotations

import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from kinetix.data.io import (
    SEEK_COST,
    FrameFolderReader,
    VideoReader,
    clear_index_cache,
    open_video,
    write_video,
)
from kinetix.data.sampling import dense_indices, segment_indices
from kinetix.errors import VideoDecodeError


def _assert_random_access_exact(reader, ref, rng, trials=25):
    n = len(ref)
    for _ in range(trials):
        idx = rng.integers(0, n, size=rng.integers(1, 9))  # unsorted, with duplicates
        out = reader.get_frames(idx)
        assert out.dtype == torch.uint8 and out.shape == (len(idx), *ref.shape[1:])
        np.testing.assert_array_equal(out.numpy(), ref[idx])


# ----------------------------------------------------------------------------- frame accuracy
def test_random_access_equals_sequential_decode(tiny_video, decode_all):
    ref = decode_all(tiny_video)
    with VideoReader(tiny_video) as r:
        assert (r.num_frames, r.width, r.height) == (72, 64, 48)
        assert r.fps == pytest.approx(25.0) and r.duration == pytest.approx(72 / 25, abs=0.05)
        _assert_random_access_exact(r, ref, np.random.default_rng(0))
        # typical clips, decoded in one call
        for idx in (segment_indices(72, 8, "test"), dense_indices(72, 16, 4, "test"), [71, 0, 71, 35]):
            np.testing.assert_array_equal(r.get_frames(idx).numpy(), ref[np.asarray(idx)])
    with VideoReader(tiny_video, num_threads=2) as r:  # frame-threaded decoder
        _assert_random_access_exact(r, ref, np.random.default_rng(10), trials=8)


def test_decodes_only_what_is_needed(tiny_video):
    clear_index_cache()
    with VideoReader(tiny_video) as r:
        kf = r.index.key_pos
        last = int(kf[-1])  # a keyframe near the end: seeking there skips everything before it
        r.get_frames([last])
        assert r.frames_decoded <= 1 + 4  # the keyframe (+ decoder reorder delay)
        r.frames_decoded = 0
        idx = segment_indices(72, 8, "test")
        r.get_frames(idx)
        assert r.frames_decoded < 72
        # one request with two nearby frames decodes the gap once, not twice
        r.frames_decoded = 0
        a = int(kf[1])
        r.get_frames([a, a + 2])
        assert r.frames_decoded <= 3 + 4


def test_span_merging_is_gop_aware(tiny_video):
    with VideoReader(tiny_video) as r:
        kf = r.index.key_pos
        spans = r._spans(np.array([0, 1, 2]))
        assert spans == [(0, 3)]  # same GOP: one seek
        far = np.array([0, int(kf[-1])])
        assert len(r._spans(far)) == (2 if kf[-1] > SEEK_COST else 1)


@pytest.mark.parametrize(
    "ext,codec,options",
    [
        ("mkv", "libx264", None),
        ("webm", "libvpx-vp9", None),
        ("avi", "mpeg4", None),
        ("ts", "mpeg2video", None),
        ("mp4", "libx264", {"x264-params": "open-gop=1"}),  # leading B-frames reference the previous GOP
    ],
)
def test_containers_and_codecs(make_video, decode_all, ext, codec, options):
    path = make_video(f"v.{ext}", num_frames=30, size=(32, 48), codec=codec, gop=8, options=options)
    with av.open(str(path)) as c:
        container_count = c.streams.video[0].frames
    ref = decode_all(path)
    with VideoReader(path) as r:
        assert r.num_frames == len(ref) == 30
        _assert_random_access_exact(r, ref, np.random.default_rng(1), trials=10)
    if ext == "mkv":
        assert container_count == 0  # Matroska stores no frame count; the reader counted it


def test_raw_stream_without_timestamps_falls_back_to_sequential(make_video, decode_all):
    path = make_video("v.h264", num_frames=30, size=(32, 48), gop=8)  # raw Annex-B: no pts at all
    ref = decode_all(path)
    with VideoReader(path) as r:
        assert r.index.pts is None and r.num_frames == 30  # counted by decoding
        _assert_random_access_exact(r, ref, np.random.default_rng(2), trials=5)


def test_variable_frame_rate_indexes_by_presentation_order(tmp_path, decode_all, pattern_frames):
    frames = pattern_frames(40, 32, 48)
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"g": "10"})
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(40):
            f = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            t += (20, 50, 33, 100)[i % 4]  # irregular frame durations (ms)
            c.mux(s.encode(f))
        c.mux(s.encode())
    ref = decode_all(path)
    with VideoReader(path) as r:
        assert r.num_frames == 40
        assert len(set(np.diff(r.index.pts).tolist())) > 1  # genuinely variable
        _assert_random_access_exact(r, ref, np.random.default_rng(3), trials=15)


def test_frames_match_the_source_pixels(make_video, pattern_frames):
    path = make_video(num_frames=12, crf=0)  # near-lossless: RGB order and levels must survive
    src = pattern_frames(12, 48, 64).astype(np.float32)
    with VideoReader(path) as r:
        out = r.get_frames(range(12)).numpy().astype(np.float32)
    assert np.abs(out - src).mean() < 6.0  # chroma subsampling costs a little; a BGR swap costs ~60


# ----------------------------------------------------------------------------- geometry, formats
def test_short_side_resize_on_decode(tiny_video, decode_all):
    ref = torch.from_numpy(decode_all(tiny_video)).permute(0, 3, 1, 2).float()  # (T, 3, 48, 64)
    with VideoReader(tiny_video, short_side=24) as r:
        assert (r.width, r.height) == (32, 24)
        out = r.get_frames([5, 40])
    assert out.shape == (2, 24, 32, 3)
    down = torch.nn.functional.avg_pool2d(ref[[5, 40]], 2).permute(0, 2, 3, 1)  # (2, 24, 32, 3)
    assert (out.float() - down).abs().mean() < 8.0


@pytest.mark.parametrize("rotation,k", [(90, 1), (-90, -1), (180, 2)])
def test_rotation_metadata_is_applied(make_video, decode_all, rotation, k):
    path = make_video(f"rot{rotation}.mp4", num_frames=10, size=(32, 48), rotation=rotation)
    ref = decode_all(path)  # stored (unrotated) frames, (T, 32, 48, 3)
    with VideoReader(path) as r:
        assert r.rotation == rotation
        assert (r.height, r.width) == ((48, 32) if rotation % 180 else (32, 48))
        out = r.get_frames([0, 7]).numpy()
    # FFmpeg's display matrix rotates the stored picture counter-clockwise by `rotation` degrees
    np.testing.assert_array_equal(out, np.rot90(ref[[0, 7]], k=k, axes=(1, 2)))
    with VideoReader(path, short_side=16) as r:
        assert r.get_frames([3]).shape == ((1, 24, 16, 3) if rotation % 180 else (1, 16, 24, 3))


def test_rotation_puts_the_top_left_corner_where_a_player_shows_it(tmp_path):
    img = np.zeros((4, 32, 48, 3), np.uint8)
    img[:, :8, :8] = 255  # white block in the stored top-left corner
    path = write_video(tmp_path / "r.mp4", img, fps=10, rotation=90, crf=0)
    out = VideoReader(path).get_frames([0])[0].numpy().mean(-1)  # (48, 32)
    # rotating 90° counter-clockwise moves the top-left corner to the bottom-left
    assert out[-8:, :8].mean() > 200 and out[:8, :8].mean() < 50


@pytest.mark.parametrize(
    "name,codec,pix_fmt,size",
    [
        ("odd.mp4", "libx264", "yuv444p", (31, 33)),
        ("p10.mp4", "libx264", "yuv420p10le", (32, 48)),
        ("gray.mkv", "ffv1", "gray", (32, 48)),
    ],
)
def test_pixel_formats_and_odd_sizes(make_video, decode_all, pattern_frames, name, codec, pix_fmt, size):
    path = make_video(name, num_frames=16, size=size, codec=codec, pix_fmt=pix_fmt, gop=6)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == pix_fmt
    ref = decode_all(path)
    with VideoReader(path) as r:
        assert (r.height, r.width) == size
        _assert_random_access_exact(r, ref, np.random.default_rng(4), trials=6)
        out = r.get_frames(range(16)).numpy().astype(np.float32)
    src = pattern_frames(16, *size).astype(np.float32)
    if pix_fmt == "gray":
        src = src @ np.array([0.299, 0.587, 0.114], np.float32)  # luma
        assert np.ptp(out, axis=-1).max() == 0  # grey in, grey RGB out
        assert np.abs(out[..., 0] - src).mean() < 4.0
    else:
        assert np.abs(out - src).mean() < 12.0


def test_short_video_with_looping_dense_clip(make_video, decode_all):
    path = make_video(num_frames=10, size=(32, 48))
    idx = dense_indices(10, 16, 4, "train", rng=np.random.default_rng(0))  # wraps around
    with VideoReader(path) as r:
        out = r.get_frames(idx)
    np.testing.assert_array_equal(out.numpy(), decode_all(path)[idx])


# ----------------------------------------------------------------------------- index cache
def test_index_cache_is_keyed_by_mtime_and_size(make_video):
    clear_index_cache()
    path = make_video(num_frames=20, size=(32, 48))
    with VideoReader(path) as r:
        first = r.index
    with VideoReader(path) as r:
        assert r.index is first  # second open: no rescan
    make_video(num_frames=30, size=(32, 48))  # rewritten in place
    with VideoReader(path) as r:
        assert r.num_frames == 30


# ----------------------------------------------------------------------------- bad input
def _write_audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 16000, 0
        c.mux(s.encode(f))
        c.mux(s.encode())


def _write_zero_frame(path):
    with av.open(str(path), "w") as c:  # a video track that never gets a frame (plus some audio)
        v = c.add_stream("libx264", rate=10)
        v.width, v.height = 32, 32
        _ = v
        a = c.add_stream("aac", rate=16000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 16000, 0
        c.mux(a.encode(f))
        c.mux(a.encode())


def test_typed_errors_name_file_and_cause(tmp_path, make_video):
    good = make_video(num_frames=20, size=(32, 48))
    data = good.read_bytes()
    cases = {}
    cases["missing"] = (tmp_path / "nope.mp4", "does not exist")
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.mp4", "empty")
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])  # moov atom (at the end) is lost
    cases["truncated"] = (tmp_path / "trunc.mp4", "cannot open")
    (tmp_path / "corrupt.mp4").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)))
    cases["corrupt"] = (tmp_path / "corrupt.mp4", "cannot open")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    cases["text"] = (tmp_path / "notes.mp4", "cannot open")
    _write_audio_only(tmp_path / "audio.m4a")
    cases["audio"] = (tmp_path / "audio.m4a", "no video stream")
    _write_zero_frame(tmp_path / "zero.mkv")
    cases["zero"] = (tmp_path / "zero.mkv", "no frames")
    cases["dir"] = (tmp_path, "is a directory")
    for name, (path, cause) in cases.items():
        with pytest.raises(VideoDecodeError) as e:
            VideoReader(path).get_frames([0])
        assert str(path) in str(e.value), name
        assert cause in str(e.value), (name, str(e.value))


def test_truncated_streamable_file_keeps_its_readable_frames(make_video, decode_all, tmp_path):
    path = make_video("v.mkv", num_frames=40, size=(32, 48), gop=8)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    ref = decode_all(cut)
    with VideoReader(cut) as r:
        assert 0 < len(ref) < 40 and r.num_frames >= len(ref)
        np.testing.assert_array_equal(r.get_frames(range(len(ref))).numpy(), ref)


def test_resolution_change_mid_stream_is_scaled_to_the_first_size(tmp_path):
    """Two MPEG-TS files of different sizes, concatenated (a valid stream whose resolution changes
    mid-way): every frame comes out at the first size, the second part's content intact."""
    a = write_video(tmp_path / "a.ts", np.full((15, 32, 48, 3), 200, np.uint8), 30, gop=5)
    b = write_video(tmp_path / "b.ts", np.full((15, 64, 40, 3), 50, np.uint8), 30, gop=5)
    both = tmp_path / "ab.ts"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    with VideoReader(both) as r:
        frames = r.get_frames(np.arange(r.num_frames))
        assert r.num_frames == 30 and frames.shape == (30, 32, 48, 3) == (30, r.height, r.width, 3)
        grey = frames.float().mean((1, 2, 3))
        assert (grey[:15] - 200).abs().max() < 4 and (grey[15:] - 50).abs().max() < 4
    with VideoReader(both, short_side=16) as r:
        assert r.get_frames([0, 29]).shape == (2, 16, 24, 3)


def test_index_out_of_range(tiny_video):
    with VideoReader(tiny_video) as r:
        with pytest.raises(IndexError, match="72 frames"):
            r.get_frames([0, 72])
        with pytest.raises(IndexError):
            r.get_frames([-1])
        assert r.get_frames([]).shape == (0, 48, 64, 3)
    with pytest.raises(ValueError, match="closed"):
        r.get_frames([0])
    assert "num_frames=72" in repr(r)  # safe after close


# ----------------------------------------------------------------------------- frame folders
def test_frame_folder_reader(make_frame_folder):
    folder, frames = make_frame_folder(num_frames=10, template="img_{:05d}.png")  # png: lossless
    with open_video(folder) as r:
        assert isinstance(r, FrameFolderReader) and r.template == "img_{:05d}.png"
        assert (r.num_frames, r.height, r.width, r.fps) == (10, 24, 32, 30.0)
        idx = [9, 0, 3, 3]
        np.testing.assert_array_equal(r.get_frames(idx).numpy(), frames[idx])
        with pytest.raises(IndexError):
            r.get_frames([10])
    r = FrameFolderReader(folder, short_side=12, fps=12.5)
    assert r.get_frames([1]).shape == (1, 12, 16, 3) and r.duration == pytest.approx(0.8)


def test_frame_folder_templates_and_start_index(make_frame_folder):
    folder, frames = make_frame_folder("zero", num_frames=6, template="{:06d}.jpg", start_index=0)
    r = FrameFolderReader(folder)  # auto: no 000001-based run -> starts at its smallest number
    assert (r.template, r.start_index, r.num_frames) == ("{:06d}.jpg", 0, 6)
    assert np.abs(r.get_frames([2]).numpy()[0].astype(int) - frames[2]).mean() < 12  # jpeg
    r = FrameFolderReader(folder, template="{:06d}.jpg", start_index=2)
    assert r.num_frames == 4
    folder, _ = make_frame_folder("plain", num_frames=12, template="frame{:d}.jpg")
    assert FrameFolderReader(folder).num_frames == 12  # unpadded numbers


def test_frame_folder_errors(tmp_path, make_frame_folder):
    with pytest.raises(VideoDecodeError, match="does not exist"):
        FrameFolderReader(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no numbered image"):
        FrameFolderReader(tmp_path / "empty")
    folder, _ = make_frame_folder(num_frames=4)
    with pytest.raises(VideoDecodeError, match="no frame file"):
        FrameFolderReader(folder, template="x_{:03d}.jpg")
    (folder / "img_00003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match=r"img_00003\.jpg"):
        FrameFolderReader(folder).get_frames([2])


def test_open_video_dispatch_and_writer_validation(tiny_video, tmp_path):
    assert isinstance(open_video(tiny_video, num_threads=2, fps=5), VideoReader)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    odd = np.random.default_rng(0).integers(0, 256, (3, 15, 21, 3), dtype=np.uint8)
    with VideoReader(write_video(tmp_path / "odd.mp4", odd, crf=0)) as r:  # yuv420p: padded to 16x22
        assert (r.height, r.width) == (16, 22)
        out = r.get_frames([1])[0].numpy().astype(int)
    assert np.abs(out[:15, :21] - odd[1]).mean() < np.abs(out[:15, :21] - odd[0]).mean()
    shutil.copy(tiny_video, tmp_path / "copy.mp4")
    assert VideoReader(tmp_path / "copy.mp4", num_threads=2).get_frames([70]).shape == (1, 48, 64, 3)
