"""``kinetix test CONFIG --checkpoint CKPT [--views CLIPSxCROPS] [--reverse-frames] [--aggregate ...]``."""

from __future__ import annotations

import argparse
import textwrap

from ._common import (
    add_backend_argument,
    add_set_argument,
    check_output_path,
    inference_option,
    load,
    names_config,
    parse_views,
)


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def register(sub) -> None:
    p = sub.add_parser(
        "test",
        help="evaluate a checkpoint (multi-view, per-class report, confusion matrix)",
        description=_wrap(
            "Evaluate a checkpoint on the config's test split (data.test_ann, else val_ann) "
            "with multi-view testing. Prints how many distinct views were used (and warns about "
            "duplicates), top-1/top-5 and mean-class accuracy; writes per_class.csv, confusion.png and "
            "metrics.json."
        ),
        epilog="examples:\n  kinetix test configs/tsm_r50_k400.yaml --checkpoint runs/tsm/checkpoints/best --views 10x3\n"
        "  kinetix test configs/demo_tsm.yaml --checkpoint runs/demo_tsm --reverse-frames\n"
        "  kinetix test configs/videomae_base_k400_finetune.yaml --checkpoint runs/videomae --backend auto",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config file (data and model settings)")
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="checkpoint folder, run folder (latest checkpoint) or weights file",
    )
    p.add_argument("--views", metavar="CLIPSxCROPS", help="test views, e.g. 10x3 (default: the model's)")
    p.add_argument(
        "--reverse-frames",
        action="store_true",
        help="feed every clip time-reversed (probe of temporal-order modelling)",
    )
    p.add_argument(
        "--aggregate",
        choices=("logits", "probs"),
        help="average views as logits or softmax probabilities (default: eval.aggregate)",
    )
    p.add_argument("--out", metavar="DIR", help="report folder (default: CKPT/eval or CKPT/eval-reversed)")
    add_backend_argument(p)
    add_set_argument(p)
    p.set_defaults(func=names_config(run))


def run(args) -> int:
    from kinetix.engine.run import test

    if args.out:
        check_output_path(args.out, "--out", folder=True)
    cfg = load(args)
    views = parse_views(args.views)
    if views is not None:
        cfg.eval.views = views
    if args.reverse_frames:
        cfg.eval.reverse_frames = True
    if args.aggregate:
        cfg.eval.aggregate = args.aggregate
    cfg.train.progress_bar = False
    res = test(cfg, args.checkpoint, args.out, **inference_option(args))
    if "mAP" in res:  # detection task: frame-mAP@0.5 (AVA protocol)
        print(
            f"frame-mAP@0.5: {res['mAP']:.2f}%  ({res['protocol']} protocol; inference: {', '.join(res['inference'])})"
        )
        _print_skipped(res, "keyframes")
        for cls, (name, ap) in sorted(res["per_class"].items()):
            print(f"  {cls:>3} {name:<28} AP {'n/a (not in the ground truth)' if ap != ap else f'{ap:.2f}%'}")
        print(f"reports:       {res['report_dir']}/predictions.csv, per_class.csv, metrics.json")
        return 0
    clips, crops = res["views"]
    n = clips * crops
    print(
        f"views:       {clips} clips x {crops} crops = {n} per video ({res['distinct_views']} distinct)"
        f", aggregated as {res['aggregate']}{', time-reversed' if res['reverse_frames'] else ''}"
    )
    print(f"videos:      {res['count']} scored (inference: {', '.join(res['inference'])})")
    _print_skipped(res, "videos")
    for k in sorted(k for k in res if k.startswith("top")):
        print(f"{k + ':':<12} {res[k]:.2f}%")
    print(f"mean-class:  {res['mean_class_acc']:.2f}%")
    if res.get("report_dir"):
        print(f"reports:     {res['report_dir']}/per_class.csv, confusion.png, metrics.json")
    return 0


def _print_skipped(res: dict, what: str) -> None:
    """Unreadable inputs are skipped (never scored in substitute): say how many and which."""
    n = res.get("skipped", 0)
    if not n:
        return
    files = res.get("skipped_videos", [])
    print(f"skipped:     {n} unreadable {what} (not scored; listed in metrics.json)")
    for f in files[:10]:
        print(f"  {f}")
    if len(files) > 10:
        print(f"  ... {len(files) - 10} more")
