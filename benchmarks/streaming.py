"""End-to-end streaming latency of the online TSM models on one thread: decode + preprocess + model.

``kinetix stream``'s loop (:func:`kinetix.deploy.stream.run_stream`) runs MobileNetV2-TSM online and
ResNet-50-TSM online over the same synthetic H.264 video (default 320x240, the online demo's camera
setting; 224 crop after a 256 short side, the models' test views). Rounds alternate between the
models; per round the per-frame latency p50 / p95 is taken, and the medians over rounds are printed,
both wall time and this thread's CPU time (with one torch thread, the CPU time is what the frame costs
on an otherwise idle core; on a shared, loaded machine the wall time also holds the waits for a core),
with the parts measured separately (decode to the resized RGB frame, preprocess, one model step).
The torch backend by default folds BatchNorm into the convs and runs channels_last ("optimized"); the
eager model as built ("plain") runs beside it, and the ratio is printed.

Baseline beside it: what a clip model without the shift cache must do for a live prediction,
re-running the 8-frame clip for every new frame (mmaction2's webcam demo, PySlowFast's live demo);
its model time per frame and the ratio to the online step are printed.

Goal: MobileNetV2-TSM online >= 30 frames/s end to end on one core, i.e. p95 <= 33 ms.

    python benchmarks/streaming.py                 # 3 rounds of 90 frames (~1 min)
    python benchmarks/streaming.py --rounds 5 --video-size 640x480
    python benchmarks/streaming.py --onnxruntime   # + the ONNX step model in onnxruntime (deploy extra)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kinetix.data.io import write_video
from kinetix.deploy.stream import FramePreprocess, OnnxBackend, TorchBackend, open_source, run_stream
from kinetix.models import create_model

MODELS = ("tsm_mobilenetv2_online", "tsm_r50_online")


def synthetic_video(path: Path, frames: int, width: int, height: int, fps: float = 30.0) -> Path:
    """A camera-like clip: textured background, a moving bright block, sensor noise (H.264, GOP 30)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    bg = np.stack([(xx * 0.7 + yy * 0.3) % 256, (yy * 0.9) % 256, (xx * 0.4 + 60) % 256], -1)  # (H, W, 3)
    out = np.empty((frames, height, width, 3), np.uint8)
    side = height // 4
    for t in range(frames):  # benchmark data only
        f = bg + rng.normal(0, 6, bg.shape)
        y, x = (3 * t) % (height - side), (5 * t) % (width - side)
        f[y : y + side, x : x + side] = (240, 200 - t % 100, 40)
        out[t] = np.clip(f, 0, 255).astype(np.uint8)
    return write_video(path, out, fps=fps, gop=30)


def _ms(fn, n: int) -> float:
    """Median milliseconds of ``n`` calls."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


@torch.inference_mode()
def parts(name: str, model, video: Path, n: int) -> dict[str, float]:
    """Median wall ms of each part: decode (to the resized RGB frame), preprocess, online step, and
    the sliding-window baseline (the 8-frame clip re-run per frame, BN folded and channels_last too)."""
    pre = FramePreprocess(model.pretrained_cfg)
    src = open_source(str(video))
    frames, dec = [], []
    it = iter(src)
    for _ in range(n):
        t = time.perf_counter()
        f = next(it)
        img = f.rgb(pre.resize)
        dec.append(1000 * (time.perf_counter() - t))
        frames.append(img)
    src.close()
    prep = _ms(lambda: pre(frames[0]), n)
    backend = TorchBackend(model)
    x = pre(frames[0])
    step = _ms(lambda: backend.step(x), n)
    clip = torch.randn(1, 3, model.num_frames, x.shape[-2], x.shape[-1])
    fast = TorchBackend(model).stream.model  # BN folded, channels_last: the optimisation of the step
    window = _ms(lambda: fast(clip), max(3, n // 10))
    return {"decode": statistics.median(dec), "preprocess": prep, "step": step, "window": window}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per model (default 3)")
    ap.add_argument("--frames", type=int, default=90, help="frames per round (default 90)")
    ap.add_argument("--video-size", default="320x240", help="WxH of the synthetic video (default 320x240)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="models to time (default: all)")
    ap.add_argument(
        "--onnxruntime", action="store_true", help="also the exported ONNX step model in onnxruntime"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.video_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        video = synthetic_video(Path(tmp) / "clip.mp4", args.frames, w, h)
        models = {n: create_model(n, num_classes=400).eval() for n in args.models}
        for m in models.values():  # warm-up (allocator, oneDNN primitives)
            run_stream(
                open_source(str(video)), TorchBackend(m), FramePreprocess(m.pretrained_cfg), max_frames=10
            )
        backends = {
            n: {"optimized": TorchBackend(m), "plain": TorchBackend(m, optimize=False)}
            for n, m in models.items()
        }
        if args.onnxruntime:  # the exported step model (explicit shift caches) in onnxruntime, same threads
            for n, m in models.items():
                backends[n]["onnxruntime"] = OnnxBackend(m, m.pretrained_cfg.input_size)
        runs: dict[tuple[str, str], list[tuple[float, ...]]] = {}
        for _ in range(args.rounds):
            for n, m in models.items():
                for kind, backend in backends[n].items():
                    rep = run_stream(open_source(str(video)), backend, FramePreprocess(m.pretrained_cfg))
                    s = rep.stats
                    runs.setdefault((n, kind), []).append(
                        (
                            s.percentile(50),
                            s.percentile(95),
                            s.percentile(50, cpu=True),
                            s.percentile(95, cpu=True),
                        )
                    )
        print(f"per-frame latency (decode + preprocess + model), {args.threads} thread(s), {w}x{h} H.264 -> "
              f"256 short side -> 224 crop; median of {args.rounds} rounds x {args.frames} frames")  # fmt: skip
        print(f"{'model':<24}{'backend':<11}{'wall p50':>9}{'p95':>7}{'cpu p50':>9}{'p95':>7}{'fps (cpu)':>11}"
              f"{'wall p95 spread':>17}  cpu p95 <= 33 ms")  # fmt: skip
        for (n, kind), r in runs.items():
            p50, p95, c50, c95 = (statistics.median(v) for v in zip(*r))
            lo, hi = min(x[1] for x in r), max(x[1] for x in r)
            ok = "yes" if c95 <= 33 else "no"
            print(f"{n:<24}{kind:<11}{p50:>9.1f}{p95:>7.1f}{c50:>9.1f}{c95:>7.1f}{1000 / c50:>11.1f}"
                  f"{lo:>9.1f}-{hi:<7.1f}  {ok}")  # fmt: skip
        for n in models:
            cpu = {k: statistics.median(x[2] for x in runs[(n, k)]) for k in backends[n]}
            others = ", ".join(f"{k} / plain {v / cpu['plain']:.2f}" for k, v in cpu.items() if k != "plain")
            print(f"{n}: cpu p50 {others}")
        print("\nparts (median ms per frame, optimized backend) and the sliding-window baseline "
              "(the 8-frame clip re-run per new frame)")  # fmt: skip
        print(f"{'model':<26}{'decode':>8}{'prep':>8}{'step':>8}{'window':>9}{'window/step':>13}")
        for n, m in models.items():
            p = parts(n, m, video, min(args.frames, 60))
            print(
                f"{n:<26}{p['decode']:>8.2f}{p['preprocess']:>8.2f}{p['step']:>8.1f}{p['window']:>9.1f}"
                f"{p['window'] / p['step']:>12.1f}x"
            )


if __name__ == "__main__":
    main()
