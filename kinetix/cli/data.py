"""``kinetix data synth|check``: write a synthetic dataset, or validate one before a long job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kinetix.errors import ConfigError

from ._common import check_output_path


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help="make a synthetic dataset or check a real one",
        description="Dataset tools. `synth` writes a small synthetic dataset of real H.264 videos "
        "(temporal classes in time-reversed pairs, or AVA-format detection). `check` validates an "
        "annotation file or dataset folder and reports counts, unreadable videos, unknown labels "
        "and a duration histogram.",
        epilog="examples:\n"
        "  kinetix data synth --kind temporal --out data/synth\n"
        "  kinetix data synth --kind detection --out data/synth_det --num-videos 40\n"
        "  kinetix data check data/synth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="data_command", metavar="{synth,check}")
    s = dsub.add_parser(
        "synth",
        help="write a synthetic dataset",
        description="Write a deterministic synthetic dataset: mp4 videos plus annotations. "
        "temporal: Kinetics-style train/val CSVs and lists, classes.txt; detection: AVA v2.2 CSVs, "
        "label map and exclusions.",
        epilog="examples:\n"
        "  kinetix data synth --kind temporal --out data/synth --num-videos 200\n"
        "  kinetix data synth --kind temporal --out data/synth32 --size 32 --fps 8 --seconds 2\n"
        "  kinetix data synth --kind detection --out data/synth_det --num-videos 40 --size 96x128",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "--kind",
        choices=("temporal", "detection"),
        default="temporal",
        help="dataset kind (default: temporal)",
    )
    s.add_argument(
        "--out", required=True, type=Path, help="output folder (created; existing files are not overwritten)"
    )
    s.add_argument("--num-videos", type=int, default=None, help="number of videos (default: the generator's)")
    s.add_argument(
        "--size",
        type=_size,
        default=None,
        help="frame size: N (square) or HxW (detection only); default: the generator's",
    )
    s.add_argument("--fps", type=float, default=None, help="frames per second")
    s.add_argument("--seconds", type=float, default=None, help="length of each video in seconds")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same dataset)")
    s.set_defaults(func=run_synth)
    c = dsub.add_parser(
        "check",
        help="validate a dataset and print a report",
        description="Parse every annotation line (listing all malformed ones with file:line), open "
        "every referenced video and decode its first and last frame, then report counts, classes, "
        "unreadable files, unknown labels and a duration histogram. Exit status 1 if problems are found.",
        epilog="examples:\n"
        "  kinetix data check data/synth                       # a `kinetix data synth` folder\n"
        "  kinetix data check k400/train.csv --root k400/videos\n"
        "  kinetix data check ava/ava_val_v2.2.csv --root ava/videos --label-map ava/ava_action_list_v2.2.pbtxt \\\n"
        "      --exclusions ava/ava_val_excluded_timestamps_v2.2.csv --time-offset 900\n"
        "  kinetix data check my_videos/ --json                # a folder of class subfolders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "path", type=Path, help="annotation file, `kinetix data synth` folder, or folder of class subfolders"
    )
    c.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder the video paths are relative to (default: next to the file)",
    )
    c.add_argument(
        "--format",
        default="auto",
        choices=("auto", "kinetics", "list", "rawframes", "ssv2", "ucf101", "hmdb51", "ava", "folder"),
        help="annotation format (default: detected)",
    )
    c.add_argument(
        "--classes", type=Path, default=None, help="class names file, one per line (fixes label order)"
    )
    c.add_argument("--labels", type=Path, default=None, help="SSv2 labels JSON")
    c.add_argument("--label-map", type=Path, default=None, help="AVA label map .pbtxt")
    c.add_argument("--exclusions", type=Path, default=None, help="AVA excluded timestamps CSV")
    c.add_argument(
        "--time-offset",
        type=float,
        default=0.0,
        help="AVA: seconds to subtract from timestamps (900 for official cuts)",
    )
    c.add_argument("--max-videos", type=int, default=None, help="open at most this many videos")
    c.add_argument("--no-decode", action="store_true", help="only open videos, do not decode frames (faster)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_check)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 64 or 96x128), got {text!r}")
    return int(parts[0]), int(parts[-1])


def run_synth(args) -> int:
    from kinetix.data.synthetic import generate

    for flag, v in (("--num-videos", args.num_videos), ("--fps", args.fps), ("--seconds", args.seconds)):
        if v is not None and not v > 0:
            raise ConfigError(f"{flag} must be > 0, got {v:g}")
    check_output_path(args.out, "--out", folder=True)
    kw = {k: getattr(args, k) for k in ("num_videos", "fps", "seconds") if getattr(args, k) is not None}
    if args.size is not None:
        h, w = args.size
        if args.kind == "temporal" and h != w:
            raise ConfigError(f"--size {h}x{w}: temporal videos are square; pass --size N")
        kw["size"] = h if args.kind == "temporal" else (h, w)
    try:
        info = generate(kind=args.kind, out_dir=args.out, seed=args.seed, **kw)
    except ValueError as e:  # the generator's limits (size, length, ...)
        raise ConfigError(f"data synth --out {args.out}: {e}") from None
    print(f"wrote a synthetic {args.kind} dataset to {args.out}")
    for key, value in info.items():
        if isinstance(value, (list, tuple)) and len(value) > 8:
            value = f"{len(value)} items: {', '.join(map(str, value[:6]))}, ..."
        elif isinstance(value, dict) and len(value) > 8:
            value = f"{len(value)} entries"
        print(f"  {key}: {value}")
    print(f"next: kinetix data check {args.out}")
    return 0


def run_check(args) -> int:
    from kinetix.data.check import check_dataset

    report = check_dataset(
        args.path,
        args.root,
        args.format,
        args.classes,
        decode=not args.no_decode,
        max_videos=args.max_videos,
        labels_file=args.labels,
        label_map=args.label_map,
        exclusions=args.exclusions,
        time_offset=args.time_offset,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    if not report.ok:
        print(
            f"kinetix data check: {args.path}: problems found (listed in the report above)", file=sys.stderr
        )
    return 0 if report.ok else 1
