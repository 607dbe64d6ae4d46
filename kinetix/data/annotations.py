"""Annotation parsers for the common video datasets, each error naming ``file:line`` and the fix.

Classification parsers return ``list[VideoRecord]`` (``label`` is a 0-based class index, -1 when the
file has no labels, e.g. a test split). AVA parsers return ``list[AVAKeyframe]`` (one per
``(video_id, timestamp)``, boxes grouped, multi-label).

Formats:

- Kinetics CSV (``label,youtube_id,time_start,time_end,split``, header required). Class indices
  are the sorted unique label names unless ``classes`` is given. Video files are found by
  :func:`resolve_paths`: a file whose name (without extension) is ``{youtube_id}`` or
  ``{youtube_id}_{start:06d}_{end:06d}``, directly under the root or one folder deeper (label
  subfolders such as ``train/abseiling/``, with spaces or underscores), any video extension.
- Generic lists: ``path label`` per line, space- or comma-separated; label = index or class name.
- Rawframe lists: ``dir num_frames label`` (TSN/TSM/mmaction style).
- Something-Something V2: labels JSON ``{"Class name": "idx"}`` + annotation JSON list of
  ``{"id", "label", "template", "placeholders"}``; class = template with ``[`` ``]`` removed;
  videos ``{id}.webm`` (or any extension, see :func:`resolve_paths`).
- UCF101: ``classInd.txt`` (``1 ApplyEyeMakeup``) + ``trainlist0N.txt`` (``Class/v_x.avi 1``, 1-based)
  or ``testlist0N.txt`` (``Class/v_x.avi``: class from the folder).
- HMDB51: ``<class>_test_split<N>.txt`` files with ``name.avi 0|1|2`` (1 train, 2 test, 0 unused);
  classes = sorted class names; videos at ``<class>/<name>``.
- AVA v2.2 CSV: ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id`` with boxes normalised to
  [0, 1]; label map pbtxt (``item { name: ".." id: N }`` or ``label { name: ".." label_id: N
  label_type: .. }``); exclusions CSV ``video_id,timestamp``.

Every parser takes ``on_error``: ``None`` raises the first :class:`AnnotationError`; a callable
receives each error and the bad line is skipped (used by ``kinetix data check`` to list them all).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kinetix.errors import AnnotationError

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
OnError = Callable[[AnnotationError], None] | None


@dataclass(frozen=True)
class VideoRecord:
    """One classification sample. ``path`` is relative to the dataset root (or absolute);
    ``stems`` are alternative file names (no extension) tried by :func:`resolve_paths`;
    ``start``/``end`` (seconds) the annotated span of an untrimmed video."""

    path: str
    label: int
    start: float | None = None
    end: float | None = None
    num_frames: int | None = None
    stems: tuple[str, ...] = ()
    source: str = ""  # "file:line" it came from


@dataclass
class AVAKeyframe:
    """All annotated people at one keyframe. ``boxes`` float32 ``(N, 4)`` normalised x1,y1,x2,y2;
    ``labels[i]`` the 1-based action ids of box i; ``person_ids`` ``(N,)`` (-1 if absent)."""

    video_id: str
    timestamp: int
    boxes: np.ndarray
    labels: list[list[int]]
    person_ids: np.ndarray
    source: str = ""
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers
def _fail(on_error: OnError, path, line, cause, fix="") -> None:
    err = AnnotationError(path, line, cause, fix)
    if on_error is None:
        raise err
    on_error(err)


def _check_file(p: Path) -> None:
    """An :class:`AnnotationError` unless ``p`` is a regular file (a folder, a device or a missing
    path is named as such)."""
    if not p.is_file():
        what = (
            "is a folder"
            if p.is_dir()
            else "is not a regular file"
            if p.exists()
            else "annotation file not found"
        )
        raise AnnotationError(p, None, what, "Check the path")


def _read_lines(path) -> list[tuple[int, str]]:
    """Non-blank, non-comment lines with 1-based line numbers."""
    p = Path(path)
    _check_file(p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(
            p, None, f"not a UTF-8 text file ({e.reason})", "Pass the annotation file"
        ) from e
    return [
        (i, s.strip())
        for i, s in enumerate(text.splitlines(), 1)
        if s.strip() and not s.lstrip().startswith("#")
    ]


def read_classes(classes) -> list[str] | None:
    """``classes``: None, a list of names, or a text file with one class name per line."""
    if classes is None or isinstance(classes, (list, tuple)):
        return None if classes is None else [str(c) for c in classes]
    return [s for _, s in _read_lines(classes)]


def _class_lookup(classes: list[str]) -> dict[str, int]:
    lookup = {c: i for i, c in enumerate(classes)}
    lookup.update({c.replace("_", " "): i for i, c in enumerate(classes)})  # "air_drumming" == "air drumming"
    return lookup


def _label_index(token: str, lookup: dict[str, int] | None, num_classes: int | None) -> int:
    """Label token -> index; raises ValueError with a message when unknown/out of range."""
    if token.lstrip("-").isdigit():
        idx = int(token)
        if idx < 0 or (num_classes is not None and idx >= num_classes):
            raise ValueError(f"label index {idx} is outside 0..{(num_classes or 1) - 1}")
        return idx
    if lookup is None:
        raise ValueError(f"label {token!r} is a name but no class list was given")
    key = token if token in lookup else token.replace("_", " ")
    if key not in lookup:
        raise ValueError(f"unknown label {token!r}")
    return lookup[key]


def _float(token: str) -> float:
    return float(token)


# ----------------------------------------------------------------------------- classification
def parse_kinetics_csv(path, classes=None, on_error: OnError = None) -> tuple[list[VideoRecord], list[str]]:
    """Kinetics CSV -> (records, classes). Unlabelled rows (test split) get label -1."""
    rows = _read_lines(path)
    if not rows:
        raise AnnotationError(path, None, "empty annotation file")
    header = [h.strip() for h in next(csv.reader([rows[0][1]]))]
    need = ["label", "youtube_id", "time_start", "time_end"]
    if any(h not in header for h in need):
        raise AnnotationError(
            path,
            rows[0][0],
            f"header {header} lacks {need}",
            "Kinetics CSVs start with 'label,youtube_id,time_start,time_end,split'",
        )
    col = {h: header.index(h) for h in header}
    parsed = []
    for (lineno, _), fields in zip(rows[1:], csv.reader(r for _, r in rows[1:])):
        fields = [f.strip() for f in fields]
        if len(fields) < len(header):
            _fail(on_error, path, lineno, f"expected {len(header)} fields, got {len(fields)}")
            continue
        try:
            start, end = _float(fields[col["time_start"]]), _float(fields[col["time_end"]])
        except ValueError:
            _fail(on_error, path, lineno, "time_start/time_end are not numbers")
            continue
        if end <= start:
            _fail(on_error, path, lineno, f"time_end {end} <= time_start {start}")
            continue
        if not fields[col["youtube_id"]]:
            _fail(on_error, path, lineno, "empty youtube_id")
            continue
        parsed.append((lineno, fields[col["label"]], fields[col["youtube_id"]], start, end))
    given = read_classes(classes)
    names = given or sorted({label for _, label, *_ in parsed if label})
    lookup = _class_lookup(names)
    records = []
    for lineno, label, yid, start, end in parsed:
        if label and label not in lookup and label.replace("_", " ") not in lookup:
            _fail(on_error, path, lineno, f"unknown label {label!r}", "Pass the training set's class list")
            continue
        idx = lookup.get(label, lookup.get(label.replace("_", " "), -1)) if label else -1
        stems = (yid, f"{yid}_{int(start):06d}_{int(end):06d}")
        records.append(VideoRecord(yid + ".mp4", idx, start, end, None, stems, f"{path}:{lineno}"))
    return records, names


def _split_label_line(line: str) -> list[str]:
    return [s.strip() for s in line.rsplit(",", 1)] if "," in line else line.rsplit(None, 1)


def parse_video_list(
    path, classes=None, on_error: OnError = None
) -> tuple[list[VideoRecord], list[str] | None]:
    """``path label`` lines (space- or comma-separated; label index or class name)."""
    names = read_classes(classes)
    lookup = _class_lookup(names) if names else None
    records = []
    rows = _read_lines(path)
    for lineno, line in rows:
        parts = _split_label_line(line)
        if len(parts) != 2 or not parts[0]:
            _fail(on_error, path, lineno, f"expected 'path label', got {line!r}")
            continue
        try:
            label = _label_index(parts[1], lookup, len(names) if names else None)
        except ValueError as e:
            _fail(on_error, path, lineno, str(e), "Use a class index or a name from the class list")
            continue
        records.append(VideoRecord(parts[0], label, source=f"{path}:{lineno}"))
    return records, names


def parse_rawframe_list(
    path, classes=None, on_error: OnError = None
) -> tuple[list[VideoRecord], list[str] | None]:
    """``frame_dir num_frames label`` lines (frame folders, e.g. Something-Something V1)."""
    names = read_classes(classes)
    lookup = _class_lookup(names) if names else None
    records = []
    for lineno, line in _read_lines(path):
        parts = line.rsplit(None, 2)
        if len(parts) != 3:
            _fail(on_error, path, lineno, f"expected 'frame_dir num_frames label', got {line!r}")
            continue
        if not parts[1].isdigit() or int(parts[1]) <= 0:
            _fail(on_error, path, lineno, f"num_frames {parts[1]!r} is not a positive integer")
            continue
        try:
            label = _label_index(parts[2], lookup, len(names) if names else None)
        except ValueError as e:
            _fail(on_error, path, lineno, str(e))
            continue
        records.append(VideoRecord(parts[0], label, num_frames=int(parts[1]), source=f"{path}:{lineno}"))
    return records, names


def _load_json(path):
    p = Path(path)
    _check_file(p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnnotationError(p, e.lineno, f"invalid JSON: {e.msg}", "Fix or re-download the file") from e


def parse_ssv2(ann_file, labels_file, on_error: OnError = None) -> tuple[list[VideoRecord], list[str]]:
    """Something-Something V2 JSON -> (records, classes ordered by the labels file's indices)."""
    labels = _load_json(labels_file)
    if not isinstance(labels, dict):
        raise AnnotationError(labels_file, None, "labels JSON must map class name -> index")
    try:
        by_idx = {int(v): k for k, v in labels.items()}
    except (TypeError, ValueError) as e:
        raise AnnotationError(labels_file, None, f"non-integer class index ({e})") from e
    if sorted(by_idx) != list(range(len(by_idx))):
        raise AnnotationError(labels_file, None, "class indices are not 0..N-1")
    names = [by_idx[i] for i in range(len(by_idx))]
    entries = _load_json(ann_file)
    if not isinstance(entries, list):
        raise AnnotationError(ann_file, None, "annotation JSON must be a list of {id, template, ...}")
    records = []
    for i, e in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(e, dict) or "id" not in e:
            _fail(on_error, ann_file, None, f"{where}: missing 'id'")
            continue
        vid = str(e["id"])
        if "template" in e:
            name = e["template"].replace("[", "").replace("]", "")
            if name not in labels:
                _fail(
                    on_error,
                    ann_file,
                    None,
                    f"{where} (id {vid}): unknown class {name!r}",
                    f"Check {labels_file}",
                )
                continue
            label = int(labels[name])
        else:
            label = -1  # test split: no labels
        records.append(VideoRecord(vid + ".webm", label, stems=(vid,), source=f"{ann_file}:{where}"))
    return records, names


def parse_ucf101(split_file, class_ind=None, on_error: OnError = None) -> tuple[list[VideoRecord], list[str]]:
    """UCF101 ``trainlist0N.txt``/``testlist0N.txt`` with ``classInd.txt`` (default: next to it)."""
    class_ind = Path(class_ind) if class_ind else Path(split_file).with_name("classInd.txt")
    names: dict[int, str] = {}
    for lineno, line in _read_lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(class_ind, lineno, f"expected '<1-based index> <ClassName>', got {line!r}")
        names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise AnnotationError(class_ind, None, "class indices are not 1..N")
    classes = [names[i] for i in range(1, len(names) + 1)]
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    records = []
    for lineno, line in _read_lines(split_file):
        parts = line.split()
        folder = parts[0].split("/")[0].lower() if "/" in parts[0] else None
        if len(parts) == 2:
            if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                _fail(on_error, split_file, lineno, f"label {parts[1]!r} is not in 1..{len(classes)}")
                continue
            label = int(parts[1]) - 1
            if folder is not None and folder in lookup and lookup[folder] != label:
                _fail(
                    on_error,
                    split_file,
                    lineno,
                    f"label {parts[1]} disagrees with folder {parts[0].split('/')[0]!r}",
                )
                continue
        elif len(parts) == 1 and folder in lookup:
            label = lookup[folder]
        else:
            _fail(on_error, split_file, lineno, f"expected 'Class/video.avi [label]', got {line!r}")
            continue
        records.append(VideoRecord(parts[0], label, source=f"{split_file}:{lineno}"))
    return records, classes


_HMDB_SPLIT = re.compile(r"^(.+)_test_split(\d)\.txt$")


def parse_hmdb51(split_dir, split: int = 1, subset: str = "train", on_error: OnError = None):
    """HMDB51 split folder (``<class>_test_split<N>.txt``, ``name 0|1|2``) -> (records, classes)."""
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    split_dir = Path(split_dir)
    files = sorted(p for p in split_dir.glob(f"*_test_split{split}.txt") if _HMDB_SPLIT.match(p.name))
    if not files:
        raise AnnotationError(
            split_dir, None, f"no '<class>_test_split{split}.txt' files", "Point to the HMDB51 split folder"
        )
    classes = [_HMDB_SPLIT.match(p.name).group(1) for p in files]
    want = "1" if subset == "train" else "2"
    records = []
    for label, (cls, p) in enumerate(zip(classes, files)):
        for lineno, line in _read_lines(p):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                _fail(on_error, p, lineno, f"expected 'video.avi 0|1|2', got {line!r}")
                continue
            if parts[1] == want:
                records.append(VideoRecord(f"{cls}/{parts[0]}", label, source=f"{p}:{lineno}"))
    return records, classes


# ----------------------------------------------------------------------------- file resolution
def _index_stems(root: Path) -> dict[str, str]:
    """Video file stem -> path relative to ``root``, for files at depth 1 and 2 (one scan)."""
    out: dict[str, str] = {}
    try:
        top = list(os.scandir(root))
    except OSError:
        return out
    for entry in sorted(top, key=lambda e: e.name):
        if entry.is_dir():
            with os.scandir(entry.path) as it:
                for sub in it:
                    stem, ext = os.path.splitext(sub.name)
                    if ext.lower() in VIDEO_EXTS:
                        out.setdefault(stem, f"{entry.name}/{sub.name}")
        else:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in VIDEO_EXTS:
                out[stem] = entry.name  # top level wins
    return out


def resolve_paths(records: Iterable[VideoRecord], root) -> tuple[list[VideoRecord], int]:
    """Replace each record's ``path`` by the existing file under ``root``: the path as written, or
    a video file whose stem is one of ``record.stems`` at depth 1 or 2 (the folder is scanned once,
    only if some path is missing). Returns (records, number still missing — kept, to be reported
    as unreadable at load time)."""
    root = Path(root)
    records = list(records)
    index = None
    out, missing = [], 0
    for r in records:
        if (root / r.path).exists() or not r.stems:
            missing += not (root / r.path).exists()
            out.append(r)
            continue
        if index is None:
            index = _index_stems(root)
        hit = next((index[s] for s in r.stems if s in index), None)
        if hit is None:
            missing += 1
            out.append(r)
        else:
            out.append(VideoRecord(hit, r.label, r.start, r.end, r.num_frames, r.stems, r.source))
    return out, missing


# ----------------------------------------------------------------------------- AVA
def parse_label_map(path) -> dict[int, str]:
    """AVA/TF-OD label map pbtxt -> ``{id: name}`` (``item {name id}`` or ``label {name label_id}``)."""
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(p, None, "label map not found", "Pass the AVA label map .pbtxt")
    text = p.read_text(encoding="utf-8")
    token = re.compile(r'\s*(?:(#[^\n]*)|(\w+)\s*\{|(\})|(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|[^\s}]+))', re.S)
    out: dict[int, str] = {}
    pos, block, block_line = 0, None, 0

    def lineno(at: int) -> int:
        return text.count("\n", 0, at) + 1

    while pos < len(text):
        if not text[pos:].strip():
            break
        m = token.match(text, pos)
        if not m:
            raise AnnotationError(
                p,
                lineno(pos),
                f"cannot parse {text[pos : pos + 30].strip()!r}",
                'Expected item { name: "..." id: N }',
            )
        comment, opener, closer, key, value = m.groups()
        start = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
        pos = m.end()
        if comment:
            continue
        if opener:
            if block is not None:
                raise AnnotationError(p, lineno(start), "nested block", "Close the previous block with }")
            block, block_line = {}, lineno(start)
        elif closer:
            if block is None:
                raise AnnotationError(p, lineno(start), "unbalanced }")
            ident = block.get("id", block.get("label_id"))
            if ident is None or "name" not in block:
                raise AnnotationError(p, block_line, "block needs a name and an id (or label_id)")
            if not ident.isdigit():
                raise AnnotationError(p, block_line, f"id {ident!r} is not an integer")
            if int(ident) in out:
                raise AnnotationError(p, block_line, f"duplicate id {ident}")
            out[int(ident)] = block["name"]
            block = None
        else:
            if block is None:
                raise AnnotationError(p, lineno(start), f"'{key}:' outside a block")
            block[key] = value[1:-1] if value.startswith('"') else value
    if block is not None:
        raise AnnotationError(p, block_line, "unclosed block", "Add the closing }")
    if not out:
        raise AnnotationError(p, None, "no labels found")
    return out


def parse_exclusions(path) -> set[tuple[str, int]]:
    """AVA excluded timestamps CSV (``video_id,timestamp``) -> set of (video_id, timestamp)."""
    out = set()
    for lineno, line in _read_lines(path):
        parts = [s.strip() for s in line.split(",")]
        if len(parts) != 2 or not parts[1].isdigit():
            raise AnnotationError(path, lineno, f"expected 'video_id,timestamp', got {line!r}")
        out.add((parts[0], int(parts[1])))
    return out


@dataclass(frozen=True)
class AVARow:
    """One row of an AVA CSV: ``box`` normalised ``(x1, y1, x2, y2)``; ``last`` the 8th column (a
    person id for ground truth, -1 when absent; a score for detections)."""

    video_id: str
    timestamp: int
    box: tuple[float, float, float, float]
    action: int
    last: float
    line: int


def read_ava_rows(path, with_scores: bool = False, on_error: OnError = None) -> list[AVARow]:
    """Every row of an AVA CSV (ground truth, or detections when ``with_scores``), checked for its
    column count and numbers only. The one AVA row reader: :func:`parse_ava_csv` (datasets) and
    :func:`kinetix.detection.ava.read_csv` (evaluation) both read through it."""
    last_name = "score" if with_scores else "person_id"
    out = []
    for lineno, line in _read_lines(path):
        parts = [s.strip() for s in line.split(",")]
        if len(parts) != 8 and (with_scores or len(parts) != 7):
            _fail(
                on_error,
                path,
                lineno,
                f"expected 8 fields video_id,timestamp,x1,y1,x2,y2,action_id,{last_name}; got {len(parts)}",
            )
            continue
        try:
            ts = int(float(parts[1])) if with_scores else int(parts[1])
            x1, y1, x2, y2 = (float(v) for v in parts[2:6])
            action = int(parts[6])
            if with_scores:
                last = float(parts[7])
            else:
                last = int(parts[7]) if len(parts) == 8 and parts[7] else -1
        except ValueError:
            what = "score" if with_scores else "person ids"
            _fail(
                on_error,
                path,
                lineno,
                f"timestamp/action ids must be integers, box coords and {what} numbers",
            )
            continue
        out.append(AVARow(parts[0], ts, (x1, y1, x2, y2), action, last, lineno))
    return out


def parse_ava_csv(
    path,
    label_ids: Iterable[int] | None = None,
    exclusions: set[tuple[str, int]] | None = None,
    unknown: str = "skip",
    on_error: OnError = None,
) -> list[AVAKeyframe]:
    """AVA v2.2 CSV -> keyframes (sorted by video, timestamp). Rows of one person (same box and
    person id) are merged into one multi-label box. Actions outside ``label_ids`` are skipped
    (``unknown="skip"``, the official practice for the 60-class benchmark; counted in a log
    message) or raise (``"error"``). Keyframes in ``exclusions`` are dropped."""
    if unknown not in ("skip", "error"):
        raise ValueError(f"unknown must be 'skip' or 'error', got {unknown!r}")
    known = set(label_ids) if label_ids is not None else None
    exclusions = exclusions or set()
    groups: dict[tuple[str, int], dict] = {}
    skipped = 0
    for row in read_ava_rows(path, False, on_error):
        x1, y1, x2, y2 = row.box
        if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
            _fail(
                on_error,
                path,
                row.line,
                f"box {x1, y1, x2, y2} is not normalised with x1<x2, y1<y2 in [0, 1]",
            )
            continue
        if known is not None and row.action not in known:
            if unknown == "error":
                _fail(on_error, path, row.line, f"action id {row.action} is not in the label map")
            skipped += 1
            continue
        if (row.video_id, row.timestamp) in exclusions:
            continue
        g = groups.setdefault((row.video_id, row.timestamp), {"boxes": {}, "line": row.line})
        person = int(row.last)
        key = (round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3), person)
        g["boxes"].setdefault(key, ([x1, y1, x2, y2], person, []))[2].append(row.action)
    if skipped:
        log.info("%s: skipped %d rows whose action id is not in the label map", path, skipped)
    out = []
    for (vid, ts), g in sorted(groups.items()):
        vals = list(g["boxes"].values())
        out.append(
            AVAKeyframe(
                vid,
                ts,
                np.array([b for b, _, _ in vals], dtype=np.float32).reshape(-1, 4),
                [sorted(set(a)) for _, _, a in vals],
                np.array([p for _, p, _ in vals], dtype=np.int64),
                f"{path}:{g['line']}",
            )
        )
    return out
