"""Helpers shared by the ``train`` / ``test`` subcommands."""

from __future__ import annotations

from kinetix.errors import ConfigError


def add_set_argument(p) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="override config keys, e.g. --set optim.lr=0.01 eval.views=[10,3] (values are YAML)",
    )


def load(args):
    from kinetix.config import load_config

    return load_config(args.config, args.overrides)


def parse_views(text: str | None) -> list[int] | None:
    """``'10x3'`` -> ``[10, 3]`` (temporal clips x spatial crops)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--views must look like CLIPSxCROPS, e.g. 10x3 or 1x1; got {text!r}")
    clips, crops = int(parts[0]), int(parts[1])
    if crops not in (1, 3, 10):
        raise ConfigError(f"--views: crops must be 1, 3 or 10 (centre, 3-crop, 10-crop); got {crops}")
    return [clips, crops]
