"""``kinetix models [PATTERN]``: list registered models with params and GMACs."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list registered models (params, GMACs)",
        description="List registered models matching a glob pattern, with parameter "
        "counts and GMACs per view at each model's default frames and input size.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'tsm*' (default: all)")
    p.add_argument("--tags", action="store_true", help="list every weight tag (arch.tag)")
    p.add_argument("--no-flops", action="store_true", help="skip counting GMACs (faster)")
    p.add_argument("--include-test", action="store_true", help="include tiny test_* models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from kinetix.errors import ModelNotFoundError
    from kinetix.models import get_pretrained_cfg, list_models
    from kinetix.models._complexity import model_complexity

    names = list_models(args.pattern, with_tags=args.tags, include_test=args.include_test)
    if not names:
        raise ModelNotFoundError(f"no model matches {args.pattern!r}; try `kinetix models` for all")
    rows = []
    for name in names:
        cfg = get_pretrained_cfg(name)
        row = {"name": name, "frames": cfg.num_frames, "size": cfg.input_size, "classes": cfg.num_classes}
        if not args.no_flops:
            res = model_complexity(name)
            row.update(params=res.params, gmacs=round(res.gmacs, 2))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<34} {'frames':>6} {'size':>5} {'classes':>7}"
    if not args.no_flops:
        header += f" {'params (M)':>11} {'GMACs':>9}"
    print(header)
    for r in rows:
        line = f"{r['name']:<34} {r['frames']:>6} {r['size']:>5} {r['classes']:>7}"
        if not args.no_flops:
            line += f" {r['params'] / 1e6:>11.2f} {r['gmacs']:>9.2f}"
        print(line)
    return 0
