"""``kinetix predict VIDEO... [--checkpoint CKPT | --model NAME] [--topk K] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from ._common import add_backend_argument, inference_option, parse_views


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify video files",
        description=_wrap(
            "Classify video files with a trained checkpoint (model, classes and data settings "
            "are read from it) or a registered model's published weights. Each video is covered by "
            "multi-view testing over its whole length."
        ),
        epilog="examples:\n  kinetix predict clip.mp4 --checkpoint runs/demo_tsm/checkpoints/best --topk 3\n"
        "  kinetix predict a.mp4 b.mp4 --model tsm_r50 --checkpoint tsm_k400.safetensors --json\n"
        "  kinetix predict clip.mp4 --checkpoint runs/demo_tsm --backend onnxruntime",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (or frame folders)")
    p.add_argument(
        "--checkpoint", metavar="CKPT", help="kinetix checkpoint folder / run folder / weights file"
    )
    p.add_argument(
        "--model", metavar="NAME", help="registered model name (its published weights, or --checkpoint's)"
    )
    p.add_argument("--topk", type=int, default=5, help="classes to show per video (default: 5)")
    p.add_argument("--views", metavar="CLIPSxCROPS", help="test views (default: the model's)")
    p.add_argument(
        "--aggregate",
        choices=("logits", "probs"),
        default=None,
        help="average views as logits or probabilities (default: the checkpoint's eval.aggregate, else logits)",
    )
    add_backend_argument(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from kinetix.engine.run import predict
    from kinetix.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    if args.checkpoint is None and args.model is None:
        raise ConfigError("pass --checkpoint CKPT (a trained kinetix checkpoint) or --model NAME")
    res = predict(
        args.videos,
        args.checkpoint,
        args.model,
        topk=args.topk,
        views=parse_views(args.views),
        aggregate=args.aggregate,
        **inference_option(args),
    )
    failed = [r for r in res if "error" in r]
    if args.json:
        print(json.dumps(res, indent=2, allow_nan=False))  # strict JSON: never NaN / Infinity
    else:
        for r in res:
            if "error" in r:
                continue
            print(f"{r['video']}  ({r['views']} views)")
            for t in r["top"]:
                print(f"  {100 * t['prob']:6.2f}%  {t['name']}")
    for r in failed:  # the readable videos are predicted; each unreadable one is reported
        print(f"kinetix predict: error: {r['error']}", file=sys.stderr)
    if failed:
        print(f"kinetix predict: {len(failed)} of {len(res)} videos could not be read", file=sys.stderr)
    return 1 if failed else 0
