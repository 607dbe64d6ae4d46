"""``kinetix detect VIDEO --checkpoint CKPT --out overlay.mp4 [--csv preds.csv]``: run a trained
spatio-temporal action detector (EVAD) at keyframes and draw boxes with action labels."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="detect actors and their actions in a video",
        description="Run a trained detector (a `task: detection` checkpoint) every --every seconds, "
        "draw boxes with their top actions on the video and/or write AVA-format predictions.",
        epilog="examples:\n"
        "  kinetix detect clip.mp4 --checkpoint runs/evad_synthetic --out overlay.mp4 --csv preds.csv\n"
        "  kinetix detect clip.mp4 --checkpoint evad_b.safetensors --csv preds.csv --every 0.5 --threshold 0.5\n"
        "  kinetix detect clip.mp4 --checkpoint runs/evad_synthetic --tokens kept.png   # kept-token map",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", type=Path, help="video file (or frame folder)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder or weights file")
    p.add_argument("--out", type=Path, default=None, help="overlay video to write (mp4)")
    p.add_argument("--csv", type=Path, default=None, help="AVA-format predictions to write")
    p.add_argument("--every", type=float, default=1.0, help="seconds between keyframes (default 1)")
    p.add_argument("--threshold", type=float, default=0.3, help="action score to draw / write (default 0.3)")
    p.add_argument("--tokens", type=Path, default=None,
                   help="PNG of the tokens kept vs dropped by keyframe token pruning, for the middle keyframe")  # fmt: skip
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from kinetix.data.io import open_video, write_video
    from kinetix.detection.ava import write_csv
    from kinetix.detection.visualize import draw_detections, kept_token_mask, plot_kept_tokens
    from kinetix.engine.detection import detect_video, keyframe_clip, load_detector
    from kinetix.errors import ConfigError, VideoDecodeError

    from ._common import check_output_path

    if args.out is None and args.csv is None and args.tokens is None:
        raise ConfigError("nothing to do: give --out overlay.mp4, --csv preds.csv and/or --tokens tokens.png")
    if not args.video.exists():
        raise VideoDecodeError(args.video, "no such file or folder", "check the path")
    if args.every <= 0 or not 0 <= args.threshold <= 1:
        raise ConfigError("--every must be > 0 and --threshold in [0, 1]")
    for f in (args.out, args.csv, args.tokens):
        if f is not None and f.exists() and not args.force:
            raise ConfigError(f"{f} exists; pass --force to overwrite it")
    for flag, f in (("--out", args.out), ("--csv", args.csv), ("--tokens", args.tokens)):
        if f is not None:
            check_output_path(f, flag)
            f.parent.mkdir(parents=True, exist_ok=True)
    model, names, settings = load_detector(args.checkpoint)
    keys, dets, fps, (H, W) = detect_video(model, args.video, settings, every=args.every)
    kept = []  # per keyframe: (boxes, labels) above the threshold
    rows = []
    for k, d in zip(keys, dets):
        boxes, labels = [], []
        for box, scores in zip(d.boxes.tolist(), d.action_scores.tolist()):
            acts = [(s, i) for i, s in enumerate(scores) if s >= args.threshold]
            if not acts:
                continue
            boxes.append(box)
            labels.append(", ".join(f"{names[i]} {s:.2f}" for s, i in sorted(acts, reverse=True)[:3]))
            x1, y1, x2, y2 = box
            rows += [
                (args.video.stem, round(k / fps), x1 / W, y1 / H, x2 / W, y2 / H, i + 1, s) for s, i in acts
            ]
        kept.append((boxes, labels))
    if args.csv is not None:
        write_csv(args.csv, rows)
    if args.out is not None:
        with open_video(args.video) as reader:
            frames = reader.get_frames(np.arange(reader.num_frames)).numpy()
        # every frame shows the detections of its nearest keyframe
        nearest = np.abs(np.arange(len(frames))[:, None] - np.asarray(keys)[None]).argmin(1)
        drawn = np.stack([draw_detections(f, *kept[j]) for f, j in zip(frames, nearest)])
        write_video(args.out, drawn, fps=fps)
    if args.tokens is not None:
        with open_video(args.video, short_side=settings.input_size) as reader:
            clip, frames = keyframe_clip(reader, int(keys[len(keys) // 2]), settings)
        plot_kept_tokens(frames.numpy(), kept_token_mask(model, clip[None]), args.tokens,
                         f"{args.video.name}, frame {keys[len(keys) // 2]}: kept tokens (keyframe in red)")  # fmt: skip
    n = sum(len(b) for b, _ in kept)
    print(f"{args.video}: {len(keys)} keyframes, {n} actor boxes above {args.threshold}"
          + (f"; overlay -> {args.out}" if args.out else "") + (f"; predictions -> {args.csv}" if args.csv else "")
          + (f"; kept tokens -> {args.tokens}" if args.tokens else ""))  # fmt: skip
    return 0
