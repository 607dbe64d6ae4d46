"""``kinetix models [PATTERN]``: list registered models with params and GMACs.

Every model is counted on the meta device (no weights allocated, no arithmetic), and each row is
printed as soon as it is counted, so the table grows on screen instead of appearing after a wait.
"""

from __future__ import annotations

import argparse
import json
import sys

from kinetix.errors import ModelNotFoundError
from kinetix.models import get_pretrained_cfg, list_models
from kinetix.models._complexity import model_complexity

EXAMPLES = """examples:
  kinetix models                      # every model: frames, size, classes, params (M), GMACs
  kinetix models 'tsm*'               # a glob pattern (quote it for the shell)
  kinetix models --no-flops           # names and input settings only (instant)
  kinetix models 'vivit*' --json      # machine-readable
  kinetix models --include-test       # also the tiny test_* variants used by the tests and the demo"""


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list registered models (params, GMACs)",
        description="List registered models matching a glob pattern, with parameter counts and GMACs "
        "(multiply-accumulates, what papers call FLOPs) of one view at each model's default frames "
        "and input size. Counting runs on the meta device: no weights are allocated.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'tsm*' (default: all)")
    p.add_argument("--tags", action="store_true", help="list every weight tag (arch.tag)")
    p.add_argument("--no-flops", action="store_true", help="skip counting params and GMACs (instant)")
    p.add_argument("--include-test", action="store_true", help="include tiny test_* models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _row(name: str, flops: bool) -> dict:
    cfg = get_pretrained_cfg(name)
    row = {"name": name, "frames": cfg.num_frames, "size": cfg.input_size, "classes": cfg.num_classes}
    if flops:
        res = model_complexity(name)
        row.update(params=res.params, gmacs=round(res.gmacs, 2))
    return row


def run(args) -> int:
    names = list_models(args.pattern, with_tags=args.tags, include_test=args.include_test)
    if not names:
        raise ModelNotFoundError(f"no model matches {args.pattern!r}; try `kinetix models` for all")
    flops = not args.no_flops
    if args.json:
        if flops and sys.stderr.isatty():
            print(f"counting params and GMACs of {len(names)} models ...", file=sys.stderr, flush=True)
        print(json.dumps([_row(n, flops) for n in names], indent=2))
        return 0
    header = f"{'model':<34} {'frames':>6} {'size':>5} {'classes':>7}"
    if flops:
        header += f" {'params (M)':>11} {'GMACs':>9}"
    print(header, flush=True)
    for name in names:  # one row at a time: the table grows while the models are counted
        r = _row(name, flops)
        line = f"{r['name']:<34} {r['frames']:>6} {r['size']:>5} {r['classes']:>7}"
        if flops:
            line += f" {r['params'] / 1e6:>11.2f} {r['gmacs']:>9.2f}"
        print(line, flush=True)
    return 0
