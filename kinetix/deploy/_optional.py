"""Optional dependencies of :mod:`kinetix.deploy` (the ``deploy`` extra: onnx, onnxscript, onnxruntime)."""

from __future__ import annotations

import importlib
from types import ModuleType

from kinetix.errors import MissingDependencyError

_EXTRA = "deploy"


def require(module: str, what: str = "ONNX export") -> ModuleType:
    """Import an optional module or raise :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{what} needs the '{module}' package, which is not installed. "
            f"Install the deploy extra: pip install 'kinetix[{_EXTRA}]'"
        ) from e


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None
