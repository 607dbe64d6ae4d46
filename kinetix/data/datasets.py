"""Map-style datasets: video classification (TSN/TSM/dense sampling, multi-view) and AVA detection.

``VideoClassificationDataset[i] -> {"video": float (C, T, H, W) or (V, C, T, H, W), "label": int,
"index": int}`` where ``V = num_clips * crops`` views (clip-major) when more than one.
``AVADataset[i] -> {"video": float (C, T, H, W), "boxes": float (N, 4) absolute pixels of the
returned clip, "labels": float (N, K) multi-hot, "meta": {...}, "index": int}``; batch it with
:func:`collate_detection`.

Robustness: a sample that cannot be read (missing, corrupt, truncated file ...) is counted in
``.bad_samples`` (path -> reason) and logged; in training it is replaced by another one chosen
deterministically, in evaluation it is skipped (never scored in substitute: see
:func:`collate_skipping`). A :class:`~kinetix.errors.DatasetError` is raised as soon as the
distinct bad samples exceed ``max_bad_fraction`` of the set. Counts are per process (each
DataLoader worker keeps its own).

Randomness: each item draws its sampling offsets and augmentation parameters from a private
generator. After ``set_epoch(e)`` its seed is ``(seed, e, index, attempt)``; otherwise it is drawn
from torch's global RNG, so a wrapper that seeds the global RNG per (epoch, index) — like the
engine's ``EpochSeeded`` — makes items reproducible independently of workers and resumption.
No file handle is kept open between items, so datasets pickle into workers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from kinetix.errors import AnnotationError, DatasetError, KinetixError

from . import annotations as ann
from .io import open_video
from .sampling import dense_indices, keyframe_indices, segment_indices, test_clip_indices
from .transforms import Normalize
from .views import clip_views

log = logging.getLogger(__name__)

FORMATS = ("kinetics", "list", "rawframes", "ssv2", "ucf101", "hmdb51")
# Errors that mean "this sample is unusable", not "the code is wrong".
SKIPPABLE = (KinetixError, OSError, EOFError, ValueError, IndexError, RuntimeError)
_UCF = re.compile(r"^(train|test)list\d+\.txt$")
_TO_FLOAT = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # default: float in [0, 1]


def detect_format(path) -> str:
    """Guess an annotation format from the file (or folder): see :data:`FORMATS` (+ ``"ava"``)."""
    p = Path(path)
    if p.is_dir():
        if any(p.glob("*_test_split*.txt")):
            return "hmdb51"
        raise DatasetError(f"{p}: a folder, but not an HMDB51 split folder; pass an annotation file")
    if p.suffix == ".json":
        return "ssv2"
    if _UCF.match(p.name):
        return "ucf101"
    rows = ann._read_lines(p)
    if not rows:
        raise DatasetError(f"{p}: empty annotation file")
    first = rows[0][1]
    if "youtube_id" in first:
        return "kinetics"
    fields = first.split(",")
    if len(fields) in (7, 8) and all(_is_number(f) for f in fields[1:7]):
        return "ava"
    parts = first.rsplit(None, 2)
    if len(parts) == 3 and parts[1].isdigit() and Path(parts[0]).suffix.lower() not in ann.VIDEO_EXTS:
        return "rawframes"
    return "list"


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_annotations(
    ann_file, format="auto", classes=None, *, labels_file=None, split=1, subset="train", on_error=None
):
    """Parse a classification annotation file -> (records, classes or None, format).

    ``on_error(AnnotationError)`` collects malformed lines instead of raising at the first one
    (``kinetix data check`` reports them all).

    ``classes`` (list or file) fixes the class order; when omitted, a ``classes.txt`` next to the
    annotation file is used if there is one (as ``kinetix data synth`` writes), else each format's
    own rule (Kinetics: sorted names). SSv2 needs ``labels_file`` (default: ``labels.json`` or
    ``something-something-v2-labels.json`` next to the annotation file).
    """
    fmt = detect_format(ann_file) if format == "auto" else format
    if fmt == "ava":
        raise DatasetError(f"{ann_file}: an AVA detection CSV, not a classification list; use AVADataset")
    if fmt not in FORMATS:
        raise DatasetError(f"{ann_file}: format must be one of {('auto', *FORMATS)}, got {fmt!r}")
    sibling = Path(ann_file).parent / "classes.txt" if Path(ann_file).is_file() else None
    if (
        classes is None
        and fmt in ("kinetics", "list", "rawframes")
        and sibling is not None
        and sibling.is_file()
    ):
        classes = sibling
    if fmt == "kinetics":
        records, names = ann.parse_kinetics_csv(ann_file, classes, on_error)
    elif fmt == "list":
        records, names = ann.parse_video_list(ann_file, classes, on_error)
    elif fmt == "rawframes":
        records, names = ann.parse_rawframe_list(ann_file, classes, on_error)
    elif fmt == "ssv2":
        if labels_file is None:
            cands = [
                Path(ann_file).with_name(n) for n in ("labels.json", "something-something-v2-labels.json")
            ]
            labels_file = next((c for c in cands if c.is_file()), None)
            if labels_file is None:
                raise DatasetError(
                    f"{ann_file}: SSv2 needs the labels JSON; pass labels_file=... (CLI: --labels FILE)"
                )
        records, names = ann.parse_ssv2(ann_file, labels_file, on_error)
    elif fmt == "ucf101":
        records, names = ann.parse_ucf101(ann_file, None, on_error)
    else:
        records, names = ann.parse_hmdb51(ann_file, split, subset, on_error)
    if not names and records:
        _check_numeric_labels(ann_file, records)
    return records, names, fmt


MAX_CLASSES_WITHOUT_NAMES = 100_000  # more classes than any video dataset has: a typo, not a label


def _check_numeric_labels(ann_file, records) -> None:
    """Numeric labels without a class list make ``max label + 1`` classes: refuse an index that
    would build an absurd classifier (a typo such as 40000000000 would allocate terabytes)."""
    top = max(records, key=lambda r: r.label)
    if top.label >= MAX_CLASSES_WITHOUT_NAMES:
        path, _, line = (top.source or str(ann_file)).rpartition(":")
        where = (path, int(line)) if line.isdigit() else (top.source or ann_file, None)
        raise AnnotationError(
            where[0], where[1],
            f"label index {top.label} without a class list would mean {top.label + 1:,} classes",
            "Fix the label, or give the class names (data.classes / --classes: one name per line)",
        )  # fmt: skip


def _as_records(samples) -> list[ann.VideoRecord]:
    out = []
    for s in samples:
        if isinstance(s, ann.VideoRecord):
            out.append(s)
        else:
            path, label = s
            out.append(ann.VideoRecord(str(path), int(label)))
    return out


class _RobustDataset(Dataset):
    """Bad-sample skipping, counting and per-item seeding shared by the datasets.

    Training (``substitute=True``): a sample that cannot be read is replaced by another one chosen
    from ``(seed, epoch, index, attempt)``; the item lists the bad indices it stands in for under
    ``"bad_indices"``. Evaluation (``substitute=False``): nothing is ever scored in a bad sample's
    place; the item is a marker ``{"index": i, "skipped": True, "reason": ...}`` that
    :func:`collate_skipping` drops from the batch (and counts). Either way the sample is counted
    once in ``bad_samples`` and logged, and :class:`~kinetix.errors.DatasetError` is raised as
    soon as the distinct bad samples exceed ``max_bad_fraction`` of the set — an exact bound: this
    process alone has seen that many. Counts are per process (each DataLoader worker keeps its
    own); the engine adds up the batches' ``bad_indices`` to check the whole set across workers
    and DDP ranks (:mod:`kinetix.engine.badsamples`).
    """

    def __init__(self, max_bad_fraction: float, seed: int, substitute: bool = True):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction, self.seed, self.substitute = max_bad_fraction, seed, substitute
        self.epoch: int | None = None
        self.bad_samples: dict[str, str] = {}  # path -> reason
        self.bad_indices: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        """Seed items from ``(seed, epoch, index)`` (exactly reproducible, resumable)."""
        self.epoch = int(epoch)

    def _rngs(self, index: int, attempt: int) -> tuple[np.random.Generator, torch.Generator]:
        if self.epoch is not None:
            key = [self.seed, self.epoch, index, attempt]
        else:  # follow the global RNG (seeded per item by the engine's EpochSeeded)
            key = [int(torch.randint(2**62, ())), attempt]
        rng = np.random.default_rng(key)
        return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))

    def _sample_path(self, index: int) -> str:
        raise NotImplementedError

    def _load(self, index: int, rng, gen) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        i = index
        bad: list[int] = []
        for attempt in range(n + 1):
            if attempt:  # replacement: a function of (seed, epoch, index, attempt) only -> reproducible
                key = [self.seed, self.epoch or 0, index, attempt]
                i = int(np.random.default_rng(key).integers(n))
            rng, gen = self._rngs(i, attempt)
            try:
                item = self._load(i, rng, gen)
            except SKIPPABLE as e:
                reason = self._mark_bad(i, e)
                bad.append(i)
                if not self.substitute:
                    return {"index": index, "skipped": True, "reason": reason}
                continue
            if bad:
                item["bad_indices"] = bad
            return item
        raise DatasetError(f"no readable sample found after {n + 1} attempts ({len(self.bad_indices)} bad)")

    def _mark_bad(self, i: int, err: Exception) -> str:
        path = self._sample_path(i)
        reason = str(err) if isinstance(err, KinetixError) else f"{type(err).__name__}: {err}"
        if i not in self.bad_indices:
            log.warning("skipping unreadable sample %s (%s)", path, reason)
        self.bad_indices.add(i)
        self.bad_samples[path] = reason
        check_bad_fraction(len(self.bad_indices), len(self), self.max_bad_fraction, self.bad_samples, err)
        return reason


def check_bad_fraction(num_bad: int, num_samples: int, max_bad_fraction: float, examples=None, cause=None):
    """``DatasetError`` when ``num_bad`` distinct samples of ``num_samples`` exceed the allowed fraction."""
    if num_bad <= max_bad_fraction * num_samples:
        return
    worst = "".join(
        f"\n  {r if r.startswith(p) else f'{p}: {r}'}" for p, r in list((examples or {}).items())[:5]
    )
    raise DatasetError(
        f"{num_bad} of {num_samples} samples are unreadable ({num_bad / num_samples:.1%} > "
        f"data.max_bad_fraction={max_bad_fraction:g})"
        + (f"; first bad files:{worst}" if worst else "")
        + "\nFix or drop these files (`kinetix data check` lists them all), or raise data.max_bad_fraction"
    ) from cause


def collate_skipping(batch: list[dict], collate=None) -> dict:
    """Collate dataset items, dropping evaluation's skipped markers: every bad index (skipped or
    substituted) goes to ``"bad_indices"`` (int64 tensor). A batch whose every item was skipped is
    just ``{"bad_indices": ...}`` (no ``"video"``)."""
    bad = [b["index"] for b in batch if b.get("skipped")]
    good = [b for b in batch if not b.get("skipped")]
    for b in good:
        bad += b.pop("bad_indices", [])
    out = (collate or default_collate)(good) if good else {}
    out["bad_indices"] = torch.tensor(bad, dtype=torch.int64)
    return out


class VideoClassificationDataset(_RobustDataset):
    """Clips for action recognition.

    Args:
        samples: ``VideoRecord`` s or ``(path, label)`` pairs; paths relative to ``root``.
        root: folder the paths are relative to (None: as given).
        num_frames: frames per clip ``T``.
        sampling: ``"segment"`` (TSN: one frame per segment) or ``"dense"`` (``T`` frames
            ``frame_interval`` apart).
        mode: ``"train"`` (random offsets) or ``"val"``/``"test"`` (fixed, ``num_clips`` views via
            :func:`~kinetix.data.sampling.test_clip_indices`, the views ``kinetix test``,
            ``predict`` and :func:`~kinetix.data.views.load_test_views` use too).
        num_clips: temporal views per video (train: independent random clips).
        transform: ``t(clip, target, generator) -> (clip, target)`` ending in ``Normalize``
            (default: float in [0, 1]).
        short_side: resize on decode (cheaper than decoding full size and resizing).
        classes: class names (index order).
        cache_decoded: decode each video once and keep all its frames in memory (uint8), so later
            epochs only index them. For small datasets (the demo, quick experiments): memory grows
            with ``frames x H x W x 3`` per video, per DataLoader worker process.

    Records with ``start``/``end`` (Kinetics) read only that span when the file is clearly
    untrimmed (longer than the span by more than 1 s and at least ``end`` long).
    """

    def __init__(
        self,
        samples: Sequence,
        root=None,
        num_frames: int = 8,
        *,
        sampling: str = "segment",
        frame_interval: int = 1,
        mode: str = "train",
        num_clips: int = 1,
        transform=None,
        short_side: int | None = None,
        max_bad_fraction: float = 0.05,
        seed: int = 0,
        classes: Sequence[str] | None = None,
        cache_decoded: bool = False,
    ):
        super().__init__(max_bad_fraction, seed, substitute=mode == "train")
        if sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        self.samples = _as_records(samples)
        self.root = Path(root) if root is not None else None
        self.num_frames, self.sampling, self.frame_interval = num_frames, sampling, frame_interval
        self.mode, self.num_clips = mode, num_clips
        self.transform, self.short_side = transform, short_side
        self.classes = list(classes) if classes else None
        self.cache_decoded = cache_decoded
        self._decoded: dict[int, tuple[torch.Tensor, float, float]] = {}  # index -> (frames, fps, s)

    @classmethod
    def from_annotations(
        cls,
        ann_file,
        root=None,
        format: str = "auto",
        classes=None,
        *,
        labels_file=None,
        split: int = 1,
        subset=None,
        **kw,
    ) -> VideoClassificationDataset:
        """Build from an annotation file of any supported format (see :func:`load_annotations`);
        ``root`` defaults to the annotation file's folder. Paths are resolved once
        (:func:`kinetix.data.annotations.resolve_paths`); missing files stay in the list and are
        skipped/counted at load time."""
        subset = subset or ("train" if kw.get("mode", "train") == "train" else "test")
        records, names, _ = load_annotations(
            ann_file, format, classes, labels_file=labels_file, split=split, subset=subset
        )
        root = Path(root) if root is not None else Path(ann_file).parent
        records, missing = ann.resolve_paths(records, root)
        if missing:
            log.warning("%s: %d of %d videos not found under %s", ann_file, missing, len(records), root)
        return cls(records, root, classes=names, **kw)

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return max((r.label for r in self.samples), default=-1) + 1

    def __len__(self) -> int:
        return len(self.samples)

    def _sample_path(self, index: int) -> str:
        p = self.samples[index].path
        return str(self.root / p) if self.root is not None else p

    def _indices(self, n: int, rng) -> np.ndarray:
        """(num_clips, T) frame indices for an ``n``-frame video."""
        T, k = self.num_frames, self.num_clips
        if self.mode != "train":
            return test_clip_indices(n, T, k, self.sampling, self.frame_interval)
        if self.sampling == "segment":
            return np.stack([segment_indices(n, T, "train", rng) for _ in range(k)])
        return dense_indices(n, T, self.frame_interval, "train", k, rng).reshape(k, T)

    def _span(self, rec, n: int, fps: float, duration: float) -> tuple[int, int]:
        """(first frame, frame count) to sample from: the annotated span of an untrimmed video."""
        lo = 0
        untrimmed = rec.start is not None and rec.end is not None
        if untrimmed and duration > rec.end - rec.start + 1.0 and duration >= rec.end - 0.5:
            lo = min(int(rec.start * fps), n - 1)
            n = max(1, min(n, int(rec.end * fps)) - lo)
        return lo, n

    def _load(self, index: int, rng, gen) -> dict:
        rec = self.samples[index]
        if self.cache_decoded:
            if index not in self._decoded:
                with open_video(self._sample_path(index), short_side=self.short_side) as reader:
                    everything = reader.get_frames(np.arange(reader.num_frames))
                    self._decoded[index] = (everything, reader.fps, reader.duration)
            everything, fps, duration = self._decoded[index]
            lo, n = self._span(rec, len(everything), fps, duration)
            idx = self._indices(n, rng) + lo  # (num_clips, T)
            frames = everything[torch.from_numpy(idx.reshape(-1))]
        else:
            with open_video(self._sample_path(index), short_side=self.short_side) as reader:
                lo, n = self._span(rec, reader.num_frames, reader.fps, reader.duration)
                idx = self._indices(n, rng) + lo  # (num_clips, T)
                frames = reader.get_frames(idx.reshape(-1))  # (num_clips * T, H, W, 3)
        frames = frames.view(self.num_clips, self.num_frames, *frames.shape[1:])
        video, target = clip_views(frames, self.transform or _TO_FLOAT, {"label": rec.label}, gen)
        return {"video": video, "label": int(target["label"]), "index": index}


# ----------------------------------------------------------------------------- AVA
class AVADataset(_RobustDataset):
    """AVA-style spatio-temporal action detection: one item per annotated keyframe.

    The clip is ``num_frames`` frames ``frame_interval`` apart centred on the keyframe at
    ``timestamp - time_offset`` seconds into the video file (``time_offset=900`` for the official
    15-minute AVA cuts that start at 900 s); frame ``round(t * fps)``, clamped at the ends.
    Videos are ``{video_root}/{video_id}.<ext>`` (any video extension, or a frame folder
    ``{video_root}/{video_id}/``). Labels: ``label_map`` ids are 1-based; index ``id - 1``,
    ``num_classes = max id`` (80 for AVA v2.2, also with the 60-class evaluation map). Rows with
    actions outside the label map are skipped, keyframes in ``exclusions`` dropped.
    ``meta["orig_size"]`` is the decoded ``(H, W)`` (before transforms), ``meta["input_size"]``
    the returned clip's ``(H, W)`` — divide boxes by it to get normalised coordinates back.
    ``mode`` is recorded for the caller; augmentation is entirely the ``transform``'s (e.g.
    :func:`~kinetix.data.transforms.detection_transform` with ``train=True``).
    """

    def __init__(
        self,
        ann_csv,
        video_root,
        label_map,
        *,
        num_frames: int = 16,
        frame_interval: int = 4,
        exclusions=None,
        transform=None,
        short_side: int | None = None,
        time_offset: float = 0.0,
        mode: str = "train",
        max_bad_fraction: float = 0.05,
        seed: int = 0,
    ):
        super().__init__(max_bad_fraction, seed, substitute=mode == "train")
        self.label_map = label_map if isinstance(label_map, dict) else ann.parse_label_map(label_map)
        self.num_classes = max(self.label_map)
        self.classes = [self.label_map.get(i + 1, "") for i in range(self.num_classes)]
        excl = ann.parse_exclusions(exclusions) if isinstance(exclusions, (str, Path)) else exclusions
        self.keyframes = ann.parse_ava_csv(ann_csv, label_ids=self.label_map, exclusions=excl)
        self.video_root = Path(video_root)
        self.num_frames, self.frame_interval = num_frames, frame_interval
        self.transform, self.short_side = transform, short_side
        self.time_offset, self.mode = time_offset, mode
        self._paths = self._resolve_videos()

    def _resolve_videos(self) -> dict[str, str]:
        index = ann._index_stems(self.video_root)  # stem -> relative path, one folder scan
        out = {}
        for vid in {k.video_id for k in self.keyframes}:
            if (self.video_root / vid).is_dir():
                out[vid] = str(self.video_root / vid)
            else:
                out[vid] = str(self.video_root / index.get(vid, vid + ".mp4"))
        return out

    def __len__(self) -> int:
        return len(self.keyframes)

    def _sample_path(self, index: int) -> str:
        return self._paths[self.keyframes[index].video_id]

    def _load(self, index: int, rng, gen) -> dict:
        kf = self.keyframes[index]
        with open_video(self._sample_path(index), short_side=self.short_side) as reader:
            n = reader.num_frames
            center = min(max(round((kf.timestamp - self.time_offset) * reader.fps), 0), n - 1)
            frames = reader.get_frames(keyframe_indices(center, self.num_frames, self.frame_interval, n))
        H, W = frames.shape[1:3]
        boxes = torch.from_numpy(kf.boxes) * torch.tensor([W, H, W, H], dtype=torch.float32)  # (N, 4) px
        labels = torch.zeros(len(kf.labels), self.num_classes)
        for j, acts in enumerate(kf.labels):  # few boxes per keyframe
            labels[j, [a - 1 for a in acts]] = 1.0
        target = {"boxes": boxes, "labels": labels, "person_ids": torch.from_numpy(kf.person_ids)}
        clip, target = (self.transform or _TO_FLOAT)(frames, target, gen)
        meta = {
            "video_id": kf.video_id,
            "timestamp": kf.timestamp,
            "orig_size": (H, W),
            "input_size": tuple(clip.shape[-2:]),
        }
        return {
            "video": clip,
            "boxes": target["boxes"],
            "labels": target["labels"],
            "meta": meta,
            "index": index,
        }


def collate_detection(batch: list[dict]) -> dict:
    """Batch AVA items: videos zero-padded (bottom/right) to the largest ``(H, W)`` and stacked to
    ``(B, C, T, H, W)``; ``boxes``/``labels`` stay lists (a variable number per clip)."""
    H = max(b["video"].shape[-2] for b in batch)
    W = max(b["video"].shape[-1] for b in batch)
    video = torch.zeros((len(batch), *batch[0]["video"].shape[:-2], H, W), dtype=batch[0]["video"].dtype)
    for i, b in enumerate(batch):  # one copy per clip into the batch tensor
        h, w = b["video"].shape[-2:]
        video[i, ..., :h, :w] = b["video"]
    return {
        "video": video,
        "boxes": [b["boxes"] for b in batch],
        "labels": [b["labels"] for b in batch],
        "meta": [b["meta"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch]),
    }
