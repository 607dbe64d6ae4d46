"""``kinetix`` command line. Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a thin wrapper over library code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from kinetix import __version__
from kinetix.errors import KinetixError

# Order in `kinetix --help`; modules not listed here follow alphabetically.
_ORDER = ("demo", "train", "test", "predict", "detect", "explain", "models", "flops", "data", "convert")


def _command_modules():
    import kinetix.cli as pkg

    names = [
        m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_") and m.name != "main"
    ]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return [importlib.import_module(f"kinetix.cli.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinetix",
        description="Efficient video understanding: train, evaluate, predict, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"kinetix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        register = getattr(mod, "register", None)
        if register is not None:
            register(sub)
    return parser


class _StderrHandler(logging.Handler):
    """kinetix's warnings (skipped samples, ...) on the current ``sys.stderr``, prefixed like its
    errors: ``kinetix COMMAND: warning: ...``."""

    command = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname.lower()
            print(f"kinetix {self.command}: {level}: {record.getMessage()}", file=sys.stderr)
        except Exception:  # a closed stream: logging must never raise
            self.handleError(record)


_HANDLER = _StderrHandler(logging.WARNING)


def _setup_logging(command: str) -> None:
    _HANDLER.command = command
    logger = logging.getLogger("kinetix")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)  # root has no handler in a CLI run: nothing prints twice


def error_message(e: BaseException) -> str:
    """The message of ``e`` without the traceback text PyTorch's DataLoader puts into errors it
    re-raises from a worker process ("Caught X in DataLoader worker process N. Original Traceback ...")."""
    text = str(e)
    if "Original Traceback (most recent call last)" not in text:
        return text
    name = f"\n{type(e).__module__}.{type(e).__name__}: "
    i = text.rfind(name)
    return text[i + len(name) :].strip() if i >= 0 else text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.command)
    try:
        return int(args.func(args) or 0)
    except KinetixError as e:
        print(f"kinetix {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's side: permissions, a full disk, a path that is a file ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"kinetix {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kinetix {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("KINETIX_DEBUG"):
            raise
        print(
            f"kinetix {args.command}: internal error: {type(e).__name__}: {e}\n"
            "This is a bug in kinetix, not in your input: please report it "
            "(run again with KINETIX_DEBUG=1 for the full traceback).",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
