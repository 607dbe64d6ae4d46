"""Typed errors for everything a user can feed kinetix.

Every error names the offending file (and line, for annotation files) and says what to do.
They all derive from :class:`KinetixError`, so a CLI can catch one type and print a clean message.
"""

from __future__ import annotations

from pathlib import Path


class KinetixError(Exception):
    """Base class of all kinetix errors that are the user's input, not a bug."""


def _where(path: str | Path | None, line: int | None = None) -> str:
    if path is None:
        return ""
    return f"{path}:{line}: " if line is not None else f"{path}: "


class VideoDecodeError(KinetixError):
    """A video file (or frame folder) cannot be opened or decoded."""

    def __init__(self, path: str | Path, cause: str, fix: str = ""):
        self.path, self.cause = str(path), cause
        msg = f"{_where(path)}cannot decode video: {cause}"
        super().__init__(msg + (f". {fix}" if fix else ""))


class AnnotationError(KinetixError):
    """An annotation / label / split file is malformed."""

    def __init__(self, path: str | Path, line: int | None, cause: str, fix: str = ""):
        self.path, self.line, self.cause = str(path), line, cause
        super().__init__(f"{_where(path, line)}{cause}" + (f". {fix}" if fix else ""))


class DatasetError(KinetixError):
    """A dataset is unusable as a whole (e.g. too many bad samples, empty)."""


class ConfigError(KinetixError):
    """A config file or a command-line override is invalid."""


class ModelArgumentError(ConfigError, ValueError, TypeError):
    """A model's entry point or constructor rejected an argument or its value (``model.kwargs``).
    Also a ``ValueError``/``TypeError``, what the constructor itself raised."""


class CheckpointError(KinetixError):
    """A checkpoint file cannot be read or does not fit the model."""


class ModelNotFoundError(KinetixError, KeyError):
    """An unknown model name was requested from the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ExportError(KinetixError):
    """A model cannot be exported, or its export does not reproduce the PyTorch outputs."""


class MissingDependencyError(KinetixError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""
