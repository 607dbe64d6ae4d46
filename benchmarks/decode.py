"""Clip decoding: ``VideoReader`` (seek + decode forward + convert only kept frames) vs full decodes.

Makes a 10 s 1280×720 30 fps H.264 video in a temp dir (a panning texture, a translucent layer,
camera noise and moving discs; x264 ``veryfast`` with B-frames, a keyframe every ``--gop`` frames),
then times, in one process:

    (a) an 8-frame TSN test clip (segment centres),  (b) a 16×4 dense test clip (centre),

each through
    kinetix   ``VideoReader(path).get_frames(idx)``: fresh reader, cold frame index (demux pass included)
    seq       a sequential PyAV decode up to the last needed frame, RGB for the needed frames only
              (the leanest frame-accurate reader without seeking)
    naive     a sequential decode up to the last needed frame converting every frame to RGB, as
              mmaction2's ``PyAVDecode`` does
    all       decode every frame and convert every frame to RGB, then index (read-the-whole-video,
              like ``torchvision.io.read_video``)

and prints the median clips/s of ``--repeats`` runs and the speed-up of kinetix over each baseline.
All readers return identical frames (checked). Single decoder thread everywhere (DataLoader-worker
setting). Target: (a) ≥ 3× faster than a full sequential decode.

    python benchmarks/decode.py                 # GOP 1 s (30 frames)
    python benchmarks/decode.py --gop 60 250    # several keyframe intervals (250 = x264 default)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from kinetix.data.io import VideoReader, clear_index_cache
from kinetix.data.sampling import dense_indices, segment_indices

W, H, FPS, SECONDS = 1280, 720, 30, 10


def make_video(path: Path, gop: int) -> Path:
    """10 s of 720p with natural-video-like statistics (I-frames ~10-15x the size of the others):
    a smooth texture panning at a sub-pixel speed, a translucent layer moving the other way, camera
    noise and two moving discs. (Integer pans of a static texture would be predicted perfectly and
    make every non-key frame nearly free.)"""
    rng = np.random.default_rng(0)
    n = FPS * SECONDS
    small = torch.from_numpy(rng.uniform(0, 255, (1, 3, (H + 700) // 24 + 2, (W + 4 * n) // 24 + 42)))
    texture = F.interpolate(small.float(), scale_factor=24, mode="bicubic")[0].permute(1, 2, 0)  # (H', W', 3)
    texture = texture.clamp(0, 255).numpy()
    noise = rng.normal(0, 3.0, (8, H, W, 1)).astype(np.float32)  # a bank of camera-noise frames
    yy, xx = np.mgrid[0:H, 0:W]
    inner = (slice(H // 4, H // 4 + H // 2), slice(W // 4, W // 4 + W // 2))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "23"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.thread_count = 0  # making the file is not timed
        for t in range(n):
            x, y = 3.37 * t, 1.7 * t  # sub-pixel motion: blend two integer shifts
            kx, ky, ax, ay = int(x), int(y), x - int(x), y - int(y)
            img = (1 - ax) * texture[:H, kx : kx + W] + ax * texture[:H, kx + 1 : kx + 1 + W]
            layer = (1 - ay) * texture[100 + ky : 100 + ky + H // 2, 600 : 600 + W // 2]
            layer += ay * texture[101 + ky : 101 + ky + H // 2, 600 : 600 + W // 2]
            img[inner] = 0.5 * (img[inner] + layer)  # a translucent layer moving the other way
            img += noise[rng.integers(len(noise))]
            for cx, cy, r, col in (
                (200 + 9 * t, 360, 90, (250, 40, 40)),
                (1000 - 6 * t, 200 + 3 * t, 60, (40, 250, 90)),
            ):
                y0, x0 = max(cy - r, 0), max(cx - r, 0)
                disc = (yy[y0 : cy + r, x0 : cx + r] - cy) ** 2 + (
                    xx[y0 : cy + r, x0 : cx + r] - cx
                ) ** 2 < r * r
                img[y0 : cy + r, x0 : cx + r][disc] = col
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, FPS)
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return path


def key_size_ratio(path: Path) -> float:
    """Mean keyframe packet size over mean other packet size."""
    with av.open(str(path)) as c:
        sizes = [(p.size, p.is_keyframe) for p in c.demux(video=0) if p.size]
    key = [sz for sz, k in sizes if k]
    other = [sz for sz, k in sizes if not k]
    return statistics.mean(key) / statistics.mean(other)


def read_kinetix(path: Path, idx: np.ndarray) -> np.ndarray:
    clear_index_cache()  # cold: every call pays the demux pass that builds the frame index
    with VideoReader(path) as r:
        return r.get_frames(idx).numpy()


def read_sequential(path: Path, idx: np.ndarray) -> np.ndarray:
    wanted, last, out = set(idx.tolist()), int(idx.max()), {}
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.thread_count = 1
        for i, frame in enumerate(c.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i == last:
                break
    return np.stack([out[i] for i in idx.tolist()])


def read_naive(path: Path, idx: np.ndarray) -> np.ndarray:
    last, frames = int(idx.max()), []
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.thread_count = 1
        for i, frame in enumerate(c.decode(video=0)):
            frames.append(frame.to_ndarray(format="rgb24"))
            if i == last:
                break
    return np.stack([frames[i] for i in idx.tolist()])


def read_all(path: Path, idx: np.ndarray) -> np.ndarray:
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.thread_count = 1
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # (N, H, W, 3)
    return frames[idx]


def median_time(fn, path, idx, repeats: int, clock) -> float:
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn(path, idx)
        times.append(clock() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gop", type=int, nargs="+", default=[30], help="keyframe interval(s) in frames")
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed runs per reader (median reported; default 5)"
    )
    ap.add_argument("--skip-all", action="store_true", help="skip the slow decode-everything baseline")
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: this process's CPU time (robust when other jobs share the cores); wall: elapsed time",
    )
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    n = FPS * SECONDS
    clips = {
        "(a) TSN 8 centres": segment_indices(n, 8, "test"),
        "(b) dense 16x4 centre": dense_indices(n, 16, 4, "test"),
    }
    readers = {"kinetix": read_kinetix, "seq": read_sequential, "naive": read_naive}
    if not args.skip_all:
        readers["all"] = read_all
    with tempfile.TemporaryDirectory() as tmp:
        for gop in args.gop:
            path = make_video(Path(tmp) / f"bench_gop{gop}.mp4", gop)
            with VideoReader(path) as r:
                assert r.num_frames == n
                keys = len(r.index.key_pos)
            print(
                f"\n{W}x{H}, {n} frames @ {FPS} fps, H.264 veryfast crf 23, GOP {gop} ({keys} keyframes, "
                f"{key_size_ratio(path):.0f}x the size of other frames), {args.clock} time"
            )
            print(f"{'clip':24s} " + " ".join(f"{k + ' clips/s':>16s}" for k in readers) + "   speed-up")
            for name, idx in clips.items():
                ref = read_sequential(path, idx)
                for fn in readers.values():
                    assert np.array_equal(fn(path, idx), ref), f"{fn.__name__} disagrees"
                rate = {k: 1.0 / median_time(fn, path, idx, args.repeats, clock) for k, fn in readers.items()}
                ratios = ", ".join(
                    f"{rate['kinetix'] / rate[k]:.1f}x vs {k}" for k in readers if k != "kinetix"
                )
                print(f"{name:24s} " + " ".join(f"{v:16.1f}" for v in rate.values()) + f"   {ratios}")


if __name__ == "__main__":
    main()
