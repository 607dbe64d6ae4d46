"""Reading and writing weight files safely.

* Reading never executes pickled code: ``.safetensors`` via safetensors, ``.npz`` with
  ``allow_pickle=False``, torch pickles with ``torch.load(weights_only=True)`` (plus a short allow-list
  of inert classes that official checkpoints store beside their weights, e.g. ``argparse.Namespace``).
* Writing is atomic: a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from kinetix.errors import CheckpointError

# Wrapper keys under which training scripts store the weights, most specific first.
_WRAPPER_KEYS = ("state_dict", "model_state", "model", "module", "params", "weights")


def _safe_globals() -> list:
    allowed: list = [argparse.Namespace]
    with contextlib.suppress(Exception):  # numpy scalars in 'best_prec1'-style entries
        allowed += [np.dtype, np.core.multiarray.scalar]  # type: ignore[attr-defined]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
    return allowed


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (or a kinetix checkpoint folder's ``model.safetensors``) into a flat
    ``{name: tensor}`` dict (wrappers such as ``{'state_dict': ...}`` or ``{'model_state': ...}`` are
    unwrapped, ``.npz`` keys kept as is)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file. Check the path.")
    if path.is_dir():  # a kinetix checkpoint folder (runs/NAME/checkpoints/best) holds model.safetensors
        if not (path / "model.safetensors").is_file():
            raise CheckpointError(
                f"{path}: a folder without model.safetensors; give a weights file or a kinetix checkpoint folder."
            )
        path = path / "model.safetensors"
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes); re-download or re-save it.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        obj = load_pickle_safely(path)
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, wrong format, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    return unwrap_state_dict(obj, path)


_GLOBAL = re.compile(r"unsupported global:?\s*GLOBAL\s+(\S+)|unsupported global:?\s*(\S+)", re.IGNORECASE)


def _unsupported_global(message: str) -> str | None:
    """``"GLOBAL os.system"`` from torch's weights_only refusal (its wording and case vary by
    version: "Unsupported global", "unsupported GLOBAL"), else None. Only the name is kept: the
    rest of torch's text advises loading with ``weights_only=False``, i.e. running the code."""
    m = _GLOBAL.search(message)
    if m is None:
        return None
    name = (m.group(1) or m.group(2)).rstrip(".,;:")
    return f"GLOBAL {name}"


def load_pickle_safely(path: str | Path, extra_globals: list | None = None):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code. A file that
    stores anything else is refused with kinetix's own message (torch's advice to retry with
    ``weights_only=False`` would run that code, so it is never repeated)."""
    try:
        with torch.serialization.safe_globals(_safe_globals() + list(extra_globals or [])):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = _unsupported_global(str(e))
        if culprit is None:  # random bytes, truncated file, ...
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if "weights_only" in first:
                first = "not a plain weights file"
            raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
        raise CheckpointError(
            f"{path}: refused to load: the file stores Python objects that are not plain tensors "
            f"({culprit}). kinetix never unpickles code; re-save only the weights, e.g. "
            "torch.save(ckpt['state_dict'], 'weights.pth'), or convert with `kinetix convert`."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:  # truncated zip, not a torch file
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from None


def unwrap_state_dict(obj, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a training checkpoint (``state_dict``/``model_state``/...)."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _mostly_tensors(inner):
                return unwrap_state_dict(inner, path)
        if _mostly_tensors(obj):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise CheckpointError(
        f"{path}: found no weights (expected a dict of tensors, possibly under one of "
        f"{', '.join(_WRAPPER_KEYS)})"
    )


def _mostly_tensors(d: Mapping) -> bool:
    vals = list(d.values())
    return bool(vals) and sum(isinstance(v, torch.Tensor) for v in vals) >= max(1, len(vals) // 2)


def strip_prefix(sd: Mapping[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    """Remove the first matching prefix from every key (e.g. ``'module.'`` from DataParallel)."""
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
                break
        out[k] = v
    return out


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield Path(tmp)
        # mode like any other output: 0666 less the user's umask (writers such as safetensors
        # create their file 0600)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_paths(*paths: str | Path):
    """:func:`atomic_path` for files that belong together (an evaluation's reports): yields one
    temporary path per file; on success every file is replaced, the first named last (name a summary
    first: once it is new, so is everything else), on an error none is. Never a mix of two runs."""
    with contextlib.ExitStack() as stack:  # exits in reverse order
        yield [stack.enter_context(atomic_path(p)) for p in paths]


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping | None = None
) -> Path:
    """Write ``tensors`` to ``path`` atomically. ``metadata`` values are JSON-encoded if not strings."""
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    # safetensors refuses shared/non-contiguous storage: store independent contiguous copies.
    clean = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)
    return Path(path)


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def read_metadata_json(path: str | Path, key: str, kind: type = object, meta: Mapping | None = None):
    """The JSON value stored under ``key`` in a safetensors file's metadata (None when absent):
    ``CheckpointError`` naming the file when it is not JSON or not a ``kind``."""
    meta = read_safetensors_metadata(path) if meta is None else meta
    raw = meta.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}: its metadata entry {key!r} is not valid JSON ({e.msg} at character {e.pos}); "
            "the file was not written by kinetix or has been edited. Re-save it, or pass --model NAME "
            "with a plain weights file"
        ) from None
    if value is not None and kind is not object and not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: its metadata entry {key!r} should be a {kind.__name__} (JSON), got {type(value).__name__}"
        )
    return value
