"""``kinetix demo [--out DIR] [--quick]``: the embedded showcase (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import textwrap


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="synthetic data -> train TSN/TSM(/GSM) -> evaluate -> report",
        description=_wrap(
            "Generate a synthetic dataset whose classes come in time-reversed pairs, train "
            "small TSN and TSM models (plus GSM in the full run) on the CPU, evaluate them "
            "on normal and time-reversed clips, and write DIR/report.md, DIR/report.json and plots. "
            "TSN cannot tell a video from its reverse (about 50% direction accuracy on the pair "
            "classes); the temporal models can."
        ),
        epilog="examples:\n"
        "  kinetix demo                           # TSN, TSM, GSM on 1400 videos: ~6-7 min on 2 idle cores\n"
        "  kinetix demo --quick --out /tmp/demo   # TSN and TSM on 1000 videos: ~2.5-3 min",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="smaller dataset (1000 videos), TSN and TSM only")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and training (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # seconds-long run for tests
    p.set_defaults(func=run)


def run(args) -> int:
    from kinetix.engine.demo import run_demo
    from kinetix.explain.demo import explain_demo

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    report = run_demo(args.out, mode, seed=args.seed, progress=not args.no_progress, explainer=explain_demo)
    print(f"\nreport: {args.out}/report.md and report.html (and report.json, accuracy.png, curves.png)")
    claim = report["claim"]
    return 0 if mode == "smoke" or all(claim.values()) else 1
