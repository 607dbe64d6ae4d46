"""Helpers shared by the ``train`` / ``test`` / ``predict`` subcommands."""

from __future__ import annotations

import functools
from pathlib import Path

from kinetix.errors import ConfigError, ModelNotFoundError


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


INFERENCE_BACKENDS = ("auto", "eager", "onednn", "onnxruntime")


def add_backend_argument(p) -> None:
    p.add_argument(
        "--backend",
        choices=INFERENCE_BACKENDS,
        help="inference path (default: the faster of eager and onednn, measured on the first batch; "
        "auto also times onnxruntime when it is installed, after a one-time export: seconds for "
        "small models, up to a minute for B-size ones; onnxruntime needs pip install 'kinetix[deploy]')",
    )


def inference_option(args) -> dict:
    """``{"inference": ...}`` for the engine when ``--backend`` is given, else ``{}`` (its default)."""
    if args.backend is None:
        return {}
    from kinetix.deploy import optimize_for_inference

    return {"inference": functools.partial(optimize_for_inference, backend=args.backend)}


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


def names_config(run):
    """A ``ConfigError`` found while running (a model argument, an annotation path, the devices)
    names the config file it comes from, like the errors found while reading it."""

    @functools.wraps(run)
    def wrapper(args):
        try:
            return run(args)
        except (ConfigError, ModelNotFoundError) as e:
            src = getattr(args, "config", None) or getattr(args, "resume", None)
            if src and str(src) not in str(e) and Path(str(src)).name not in str(e):
                raise ConfigError(f"{src}: {e}") from None
            raise

    return wrapper


def check_output_path(path, flag: str, *, folder: bool = False) -> None:
    """An output path must not lie under a file (and, for a ``folder``, not be a file itself)."""
    path = Path(path)
    start = path if folder else path.parent
    blocking = next((q for q in (start, *start.parents) if q.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"{flag} {path}: {blocking} is a file, not a folder")
