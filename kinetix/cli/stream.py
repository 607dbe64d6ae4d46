"""``kinetix stream SOURCE --checkpoint CKPT [--model NAME] [--out overlay.mp4] [--realtime] [--backend B]``."""

from __future__ import annotations

import argparse
import sys
import textwrap

import torch

from kinetix.deploy.stream import (
    BACKENDS,
    FramePreprocess,
    load_stream_model,
    make_backend,
    open_source,
    run_stream,
)
from kinetix.errors import ConfigError

EXAMPLES = """examples:
  kinetix stream clip.mp4 --checkpoint runs/online_tsm --out overlay.mp4
  kinetix stream clip.mp4 --checkpoint runs/online_tsm --realtime
  kinetix stream clip.mp4 --checkpoint runs/online_tsm --backend torch
  kinetix stream frames/ --model tsm_mobilenetv2_online --checkpoint converted.safetensors
  kinetix stream /dev/video0 --checkpoint runs/online_tsm              # Linux camera
  kinetix stream avfoundation:0 --checkpoint runs/online_tsm           # macOS camera
  kinetix stream "dshow:video=Integrated Camera" --checkpoint runs/online_tsm   # Windows camera
  kinetix stream rtsp://camera.local:554/live --checkpoint runs/online_tsm"""


def register(sub) -> None:
    p = sub.add_parser(
        "stream",
        help="run an online recogniser frame by frame on a video, camera or stream",
        description=textwrap.fill(
            "Run an online (causal) recogniser on SOURCE one frame at a time: each frame gives one "
            "prediction, the label smoothed over the last --smooth frames, printed live with the frame "
            "rate and per-frame latency (decode + preprocess + model). SOURCE is a video file, a folder "
            "of frames, a camera (/dev/videoN, v4l2:DEV, avfoundation:DEV, dshow:video=NAME) or a "
            "URL (rtsp://, http://, udp://, ...). Ctrl-C stops and prints the summary.",
            88,
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="video file, frame folder, camera device or stream URL")
    p.add_argument(
        "--checkpoint", metavar="CKPT", help="kinetix checkpoint folder / run folder / weights file"
    )
    p.add_argument("--model", metavar="NAME", help="registered online model (its weights, or --checkpoint's)")
    p.add_argument("--out", metavar="VIDEO", help="write the frames with the label drawn (e.g. overlay.mp4)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace a file or folder at its frame rate, dropping frames when the model falls behind",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="torch, onnxruntime (the model exported as an ONNX step model with explicit shift caches, "
        "checked against torch; pip install 'kinetix[deploy]') or auto (default): both timed on a few "
        "frames, the faster used; torch when onnxruntime is not installed",
    )
    p.add_argument(
        "--smooth", type=int, default=12, metavar="N", help="frames of logits averaged (default: 12)"
    )
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for a network source"
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (default: torch's; 1 on a busy machine)"
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.smooth < 1:
        raise ConfigError(f"--smooth must be >= 1, got {args.smooth}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    model, settings, class_names = load_stream_model(args.checkpoint, args.model)
    open_source(args.source, timeout=args.timeout).close()  # fail fast, before a backend is built
    backend = make_backend(args.backend, model, settings.input_size)
    timings = getattr(backend, "timings", None)
    if timings and not args.quiet:
        what = ", ".join(
            f"{k} {v:.1f} ms" if isinstance(v, float) else f"{k} {v}" for k, v in timings.items()
        )
        print(f"backend: {backend.name} ({what} per step)")
    source = open_source(args.source, timeout=args.timeout)
    tty = sys.stdout.isatty()

    def show(res, stats) -> None:
        if args.quiet:
            return
        window = stats.latency_ms[-30:]
        line = (
            f"frame {res.index:6d}  {res.time:7.2f}s  {res.name[:40]:<40s} {100 * res.prob:5.1f}%  "
            f"{stats.fps:5.1f} fps  {sum(window) / len(window):6.1f} ms"
        )
        print("\r" + line if tty else line, end="" if tty else "\n", flush=True)

    report = run_stream(
        source,
        backend,
        FramePreprocess(settings),
        class_names,
        smooth=args.smooth,
        realtime=args.realtime,
        out=args.out,
        on_result=show,
        max_frames=args.max_frames,
    )
    if tty and not args.quiet:
        print()
    if report.ended == "interrupted":
        print("interrupted")
    elif report.ended != "end":
        print(f"{args.source}: {report.ended}")
        if report.failed:  # stopped early (truncated file, decode or network error): an error too
            print(f"kinetix stream: error: {args.source}: {report.ended}", file=sys.stderr)
    print(report.stats.summary())
    if args.out:
        print(f"overlay: {args.out}")
    if report.ended == "interrupted":
        return 130
    return 1 if report.failed else 0
