"""``kinetix flops MODEL``: GMACs (multiply-adds, the papers' "FLOPs") and params of one view."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "flops",
        help="GMACs and params of a model",
        description="Count GMACs (multiply-accumulates, what papers call FLOPs) and "
        "parameters of one forward pass (batch 1), attention included. Counting runs on the meta "
        "device: no weights are allocated.",
        epilog="examples:\n"
        "  kinetix flops tsm_r50                          # 32.70 GMACs at its default 8 x 224\n"
        "  kinetix flops timesformer_base --frames 16 --size 448\n"
        "  kinetix flops videomae_base --set keep_rate=0.7   # constructor arguments (YAML values)\n"
        "  kinetix flops vivit_base_m1 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="registered model name, e.g. tsm_r50")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="input height=width (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="model constructor arguments (YAML values), e.g. --set keep_rate=0.7 attention=joint",
    )
    p.add_argument("--json", action="store_true", help='print {"gmacs": ..., "params": ...}')
    p.set_defaults(func=run)


def _model_kwargs(items: list[str]) -> dict:
    from kinetix.config import parse_key_value
    from kinetix.errors import ConfigError

    kwargs = {}
    for item in items:
        key, value = parse_key_value(item, "KEY=VALUE", "--set keep_rate=0.7 attention=joint")
        if not key.isidentifier():
            raise ConfigError(f"--set expects KEY=VALUE with a Python identifier as KEY, got {item!r}")
        kwargs[key] = value
    return kwargs


def run(args) -> int:
    from kinetix.errors import ConfigError
    from kinetix.models._complexity import model_complexity

    for flag, v in (("--frames", args.frames), ("--size", args.size), ("--num-classes", args.num_classes)):
        if v is not None and v <= 0:
            raise ConfigError(f"{flag} must be a positive integer, got {v}")
    kwargs = _model_kwargs(args.set)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    try:
        res = model_complexity(args.model, num_frames=args.frames, input_size=args.size, **kwargs)
    except (TypeError, ValueError) as e:  # a constructor rejecting an argument or a value
        if not kwargs:
            raise
        raise ConfigError(f"{args.model} does not accept {kwargs}: {e}") from None
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"{args.model}: {res.gmacs:.2f} GMACs, {res.params / 1e6:.2f} M params")
    return 0
