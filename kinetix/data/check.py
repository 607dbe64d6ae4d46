"""``check_dataset``: validate a dataset before a long job and report what is wrong with it.

Accepts any annotation file the datasets read (Kinetics CSV, lists, rawframes, SSv2 JSON, UCF101 /
HMDB51 splits, AVA CSV), a folder written by ``kinetix data synth`` (both splits are checked), or a
folder of class subfolders (``root/<class>/<video>``). Every line is parsed (all malformed lines are
listed, not just the first), every referenced video is opened and, with ``decode=True``, its first
and last frames are decoded (catches truncated files). The report has counts, classes and
per-class counts, unreadable files with the reason, unknown labels and a duration histogram.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kinetix.errors import AnnotationError, DatasetError, KinetixError

from . import annotations as ann
from .datasets import FORMATS, detect_format, load_annotations
from .io import open_video

DURATION_BINS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 300.0)  # seconds; last bin is open-ended
_UNKNOWN = re.compile(r"unknown (?:label|class) '(.+?)'|label index (-?\d+) is outside|label (\S+) is not in")


@dataclass
class DatasetReport:
    """What ``check_dataset`` found. ``parts`` holds one report per split for a folder."""

    path: str
    annotation_format: str
    num_samples: int = 0
    classes: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    num_videos: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    annotation_errors: list[str] = field(default_factory=list)  # "file:line: cause"
    unknown_labels: dict[str, int] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    frame_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> videos
    detection: dict = field(default_factory=dict)  # AVA: keyframes, boxes, excluded, outside video
    warnings: list[str] = field(default_factory=list)  # duplicates, paths outside the root, ...
    parts: list[DatasetReport] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """A dataset (not a folder of splits) with no sample at all: nothing to train or test on."""
        return not self.parts and self.num_samples == 0

    @property
    def ok(self) -> bool:
        mine = not (self.unreadable or self.annotation_errors or self.unknown_labels or self.empty)
        return mine and all(p.ok for p in self.parts)

    def duration_histogram(self) -> list[tuple[str, int]]:
        edges = list(DURATION_BINS)
        counts = [0] * len(edges)
        for d in self.durations:
            counts[max(i for i, e in enumerate(edges) if max(d, 0.0) >= e)] += 1
        names = [f"{a:g}-{b:g}s" for a, b in itertools.pairwise(edges)] + [f">={edges[-1]:g}s"]
        return list(zip(names, counts))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("durations")
        d["parts"] = [p.to_dict() for p in self.parts]
        d["ok"] = self.ok
        d["empty"] = self.empty
        d["duration_histogram"] = dict(self.duration_histogram())
        if self.durations:
            d["duration_s"] = {
                "min": min(self.durations),
                "max": max(self.durations),
                "mean": sum(self.durations) / len(self.durations),
            }
        return d

    def format(self, max_items: int = 20) -> str:
        if self.parts:
            head = f"{self.path}: {len(self.parts)} split(s) — {'OK' if self.ok else 'PROBLEMS FOUND'}"
            return "\n\n".join([head, *(p.format(max_items) for p in self.parts)])
        lines = [f"{self.path}  [{self.annotation_format}]"]
        lines.append(
            f"  samples: {self.num_samples}   videos: {self.num_videos}   classes: {len(self.classes)}"
        )
        if self.detection:
            lines.append("  " + "   ".join(f"{k}: {v}" for k, v in self.detection.items()))
        if self.class_counts:
            counts = sorted(self.class_counts.items(), key=lambda kv: -kv[1])
            lo, hi = counts[-1], counts[0]
            lines.append(f"  per class: max {hi[1]} ({hi[0]}), min {lo[1]} ({lo[0]})")
            empty = [n for n, c in counts if c == 0]
            if empty:
                lines.append(
                    f"  classes without samples: {len(empty)} ({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''})"
                )
            for name, c in counts[:max_items]:
                lines.append(f"    {c:>7}  {name}")
            if len(counts) > max_items:
                lines.append(f"    ... {len(counts) - max_items} more classes")
        if self.durations:
            lines.append(
                f"  duration: min {min(self.durations):.2f}s  mean {sum(self.durations) / len(self.durations):.2f}s  "
                f"max {max(self.durations):.2f}s"
            )
            peak = max(c for _, c in self.duration_histogram()) or 1
            for name, c in self.duration_histogram():
                if c:
                    lines.append(f"    {name:>10} {c:>7} {'#' * max(1, round(30 * c / peak))}")
        if self.frame_sizes:
            sizes = sorted(self.frame_sizes.items(), key=lambda kv: -kv[1])[:5]
            lines.append("  frame sizes (WxH): " + ", ".join(f"{s} ({c})" for s, c in sizes))
        if self.empty:
            lines.append(
                "  no samples: the annotation lists no videos (a header only, or every line malformed)"
            )
        for title, items in (
            ("warnings", self.warnings),
            ("unreadable videos", [f"{p}: {r}" for p, r in self.unreadable.items()]),
            ("annotation errors", self.annotation_errors),
            ("unknown labels", [f"{k!r}: {v} lines" for k, v in self.unknown_labels.items()]),
        ):
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines += [f"    {s}" for s in items[:max_items]]
                if len(items) > max_items:
                    lines.append(f"    ... {len(items) - max_items} more")
        note = f" ({len(self.warnings)} warnings)" if self.warnings else ""
        lines.append("  status: " + ("OK" if self.ok else "PROBLEMS FOUND") + note)
        return "\n".join(lines)


def _probe(path: Path, decode: bool) -> tuple[float, str] | str:
    """(duration, "WxH") of a readable video, else the reason it is unreadable."""
    try:
        with open_video(path) as r:
            n = r.num_frames
            if n < 1:
                return "no frames"
            if decode:
                r.get_frames([0, n - 1])
            return float(r.duration), f"{r.width}x{r.height}"
    except (KinetixError, OSError, ValueError, IndexError, RuntimeError, EOFError) as e:
        return f"{type(e).__name__}: {e}"


def _probe_all(report: DatasetReport, paths, decode: bool, max_videos: int | None) -> dict[str, float]:
    """Open (and decode) each distinct video; returns path -> duration of the readable ones."""
    uniq = list(dict.fromkeys(paths))
    durations = {}
    report.num_videos = len(uniq)
    sizes: Counter = Counter()
    for p in uniq[:max_videos]:
        res = _probe(Path(p), decode)
        if isinstance(res, str):
            report.unreadable[str(p)] = res
        else:
            report.durations.append(res[0])
            durations[str(p)] = res[0]
            sizes[res[1]] += 1
    report.frame_sizes = dict(sizes)
    return durations


def _collect(report: DatasetReport):
    def on_error(err: AnnotationError) -> None:
        report.annotation_errors.append(str(err))
        m = _UNKNOWN.search(err.cause)
        if m:
            key = next(g for g in m.groups() if g is not None)
            report.unknown_labels[key] = report.unknown_labels.get(key, 0) + 1

    return on_error


def _check_classification(path: Path, root, fmt, classes, decode, max_videos, **kw) -> DatasetReport:
    report = DatasetReport(str(path), fmt)
    on_error = _collect(report)
    records, names, _ = load_annotations(
        path, fmt, classes, labels_file=kw.get("labels_file"), split=kw.get("split", 1),
        subset=kw.get("subset", "train"), on_error=on_error,
    )  # fmt: skip
    root = Path(root) if root is not None else (path if path.is_dir() else path.parent)
    records, _ = ann.resolve_paths(records, root)
    report.num_samples = len(records)
    report.warnings += _duplicates_and_outside(records, root)
    report.classes = list(names or sorted({str(r.label) for r in records}))
    counts = Counter(r.label for r in records)
    report.class_counts = {n: counts.get(i, 0) for i, n in enumerate(names or [])}  # zeros included
    report.class_counts.update(
        {str(k): v for k, v in sorted(counts.items()) if not names or not 0 <= k < len(names)}
    )
    _probe_all(report, [root / r.path for r in records], decode, max_videos)
    return report


def _duplicates_and_outside(records, root: Path) -> list[str]:
    """Warnings: a video listed more than once (same or different labels), a path that resolves
    outside the dataset root (``../``, absolute paths, symlinks out)."""
    out = []
    by_path: dict[str, list] = {}
    for r in records:
        by_path.setdefault(r.path, []).append(r)
    for path, rs in by_path.items():
        if len(rs) > 1:
            labels = sorted({r.label for r in rs})
            where = ", ".join(r.source for r in rs[:3] if r.source)
            what = f"with different labels {labels}" if len(labels) > 1 else "as duplicate rows"
            out.append(f"{path}: listed {len(rs)} times {what}" + (f" ({where})" if where else ""))
    base = root.resolve()
    outside = [r for r in records if not (root / r.path).resolve().is_relative_to(base)]
    for r in outside[:20]:
        out.append(
            f"{r.source or r.path}: {r.path} resolves outside the dataset root {root} "
            f"(to {(root / r.path).resolve()})"
        )
    if len(outside) > 20:
        out.append(f"... {len(outside) - 20} more paths outside the dataset root")
    return out


def _check_ava(
    path: Path, root, decode, max_videos, label_map=None, exclusions=None, time_offset=0.0
) -> DatasetReport:
    report = DatasetReport(str(path), "ava")
    on_error = _collect(report)
    if label_map is None:
        maps = sorted(path.parent.glob("*.pbtxt"))
        if len(maps) != 1:
            raise DatasetError(
                f"{path}: pass the AVA label map (--label-map FILE); found {len(maps)} .pbtxt next to it"
            )
        label_map = maps[0]
    names = ann.parse_label_map(label_map)
    if exclusions is None and (path.parent / "excluded_timestamps.csv").is_file():
        exclusions = path.parent / "excluded_timestamps.csv"
    excl = ann.parse_exclusions(exclusions) if exclusions else set()
    keyframes = ann.parse_ava_csv(path, on_error=on_error)  # every action, to count unknown ones
    kept = [k for k in keyframes if (k.video_id, k.timestamp) not in excl]
    actions: Counter = Counter(a for k in kept for labels in k.labels for a in labels)
    unknown = {str(a): c for a, c in actions.items() if a not in names}
    report.unknown_labels.update(unknown)
    report.num_samples = len(kept)
    report.classes = [names[i] for i in sorted(names)]
    report.class_counts = {names[a]: c for a, c in sorted(actions.items()) if a in names}
    roots = (
        [Path(root)]
        if root is not None
        else [path.parent, path.parent.parent / "videos", path.parent / "videos"]
    )
    vids = sorted({k.video_id for k in kept})
    root = next(
        (r for r in roots if ann._index_stems(r).keys() & set(vids) or any((r / v).is_dir() for v in vids)),
        roots[0],
    )
    index = ann._index_stems(root)
    video_path = {v: root / v if (root / v).is_dir() else root / index.get(v, v + ".mp4") for v in vids}
    by_path = _probe_all(report, [video_path[v] for v in vids], decode, max_videos)
    durations = {v: by_path[str(video_path[v])] for v in vids if str(video_path[v]) in by_path}
    outside = sum(
        1
        for k in kept
        if k.video_id in durations and not 0 <= k.timestamp - time_offset < durations[k.video_id]
    )
    report.detection = {
        "keyframes": len(kept),
        "boxes": sum(len(k.boxes) for k in kept),
        "excluded": len(keyframes) - len(kept),
        "outside_video": outside,
        "video_root": str(root),
    }
    if outside:
        report.annotation_errors.append(
            f"{path}: {outside} keyframes lie outside their video (timestamp - time_offset={time_offset:g} "
            "is not within the video's duration); set time_offset (900 for the official AVA cuts)"
        )
    return report


def _check_class_folders(path: Path, decode: bool, max_videos) -> DatasetReport:
    report = DatasetReport(str(path), "folder")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    files = {
        c: sorted(f for f in (path / c).iterdir() if f.suffix.lower() in ann.VIDEO_EXTS) for c in classes
    }
    report.classes = classes
    report.class_counts = {c: len(v) for c, v in files.items()}
    report.num_samples = sum(report.class_counts.values())
    _probe_all(report, [f for c in classes for f in files[c]], decode, max_videos)
    return report


def check_dataset(
    path_or_ann_file,
    root=None,
    format: str = "auto",
    classes=None,
    *,
    decode: bool = True,
    max_videos: int | None = None,
    labels_file=None,
    label_map=None,
    exclusions=None,
    time_offset: float = 0.0,
    split: int = 1,
    subset: str = "train",
) -> DatasetReport:
    """Validate a dataset (see the module docstring) -> :class:`DatasetReport`.

    ``format``: ``"auto"``, one of :data:`kinetix.data.datasets.FORMATS`, or ``"ava"``. For AVA the
    label map / exclusions default to the ``.pbtxt`` / ``excluded_timestamps.csv`` next to the CSV
    and the video root to the CSV's folder (or ``../videos``). ``max_videos`` limits how many videos
    are opened (all by default).
    """
    path = Path(path_or_ann_file)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir() and (path / "synth.json").is_file():
        meta = json.loads((path / "synth.json").read_text())
        if meta.get("kind") == "detection" or (path / "annotations").is_dir():
            files = [path / "annotations" / f"{s}.csv" for s in ("train", "val")]
        else:
            files = [path / f"{s}.csv" for s in ("train", "val")]
        parts = [
            check_dataset(
                f, root, "auto", classes, decode=decode, max_videos=max_videos, time_offset=time_offset
            )
            for f in files
            if f.is_file() and f.read_text().strip()
        ]
        parts = [r for r in parts if not r.empty] or parts[:1]  # a tiny set may have an empty val split
        return DatasetReport(str(path), f"synthetic-{meta.get('kind', 'temporal')}", parts=parts)
    if path.is_dir() and format in ("auto", "folder") and not any(path.glob("*_test_split*.txt")):
        return _check_class_folders(path, decode, max_videos)
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "ava":
        return _check_ava(path, root, decode, max_videos, label_map, exclusions, time_offset)
    if fmt not in FORMATS:
        raise DatasetError(f"format must be one of {('auto', 'ava', 'folder', *FORMATS)}, got {fmt!r}")
    return _check_classification(
        path, root, fmt, classes, decode, max_videos, labels_file=labels_file, split=split, subset=subset
    )
