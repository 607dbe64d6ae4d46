"""Frame-mAP@0.5 with the AVA protocol (Gu et al., CVPR 2018; the ActivityNet AVA evaluator).

Ground truth and detections are AVA CSV rows ``video_id, timestamp, x1, y1, x2, y2, action_id[,
person_id | score]`` with boxes normalised to [0, 1]; a keyframe is ``(video_id, timestamp)``.
Per class, detections are sorted by score within each keyframe and greedily matched to the
unmatched ground-truth box of highest IoU ≥ 0.5 (a detection whose best box is taken is a false
positive); detections on keyframes without ground truth are false positives; excluded keyframes are
dropped from both sides; only classes of the label map count; as in the official script, at most
``capacity`` (50) top-scoring detection rows are kept per keyframe.

AP is the VOC (2010+) area under the interpolated precision/recall curve. Ties in score are one
operating point (order-independent; the official script breaks ties by sort order, which NumPy
leaves unspecified). A class with ground truth and no detection has AP 0; a class absent from the
ground truth has no AP and is left out of the mean (as in the official script).
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from kinetix.errors import AnnotationError

# The 60 classes of the AVA v2.x ActivityNet challenge (those with >= 25 validation instances).
AVA_60_CLASSES = (
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 20, 22, 24, 26, 27, 28, 29, 30, 34, 36, 37,
    38, 41, 43, 45, 46, 47, 48, 49, 51, 52, 54, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68,
    69, 70, 72, 73, 74, 76, 77, 78, 79, 80,
)  # fmt: skip


def read_label_map(path: str | Path) -> dict[int, str]:
    """``{id: name}`` from an AVA label-map pbtxt (``item { name: ".." id: N }`` or ``label_id``)."""
    text = Path(path).read_text()
    names = re.findall(r'name:\s*"([^"]*)"', text)
    ids = re.findall(r"\b(?:label_)?id:\s*(\d+)", text)
    if not ids or len(names) != len(ids):
        raise AnnotationError(
            path,
            None,
            f"found {len(names)} names and {len(ids)} ids",
            'expected `item { name: "..." id: N }` blocks',
        )
    return {int(i): n for i, n in zip(ids, names)}


def read_exclusions(path: str | Path) -> set[tuple[str, int]]:
    """Excluded keyframes ``{(video_id, timestamp)}`` from a ``video_id,timestamp`` CSV."""
    out = set()
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            try:
                out.add((row[0], int(float(row[1]))))
            except (IndexError, ValueError):
                raise AnnotationError(
                    path, line, f"bad row {row!r}", "expected `video_id,timestamp`"
                ) from None
    return out


def read_csv(path: str | Path, with_scores: bool, capacity: int = 0) -> dict[tuple[str, int], list]:
    """``{keyframe: [(box (4,), action_id, score), ...]}`` from an AVA CSV.

    ``with_scores``: the 8th column is a score (detections); otherwise it is a person id (ignored)
    and every score is 1. ``capacity > 0`` keeps that many top-scoring rows per keyframe."""
    rows = defaultdict(list)
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) not in (7, 8) or (with_scores and len(row) != 8):
                n = "8" if with_scores else "7 or 8"
                raise AnnotationError(
                    path, line, f"expected {n} columns, got {len(row)}",
                    "rows are video_id,timestamp,x1,y1,x2,y2,action_id" + (",score" if with_scores else "[,person_id]"),
                )  # fmt: skip
            try:
                box = np.array([float(v) for v in row[2:6]])
                action = int(row[6])
                score = float(row[7]) if with_scores else 1.0
                key = (row[0], int(float(row[1])))
            except ValueError as e:
                raise AnnotationError(path, line, f"cannot parse {row!r}: {e}", "check the numbers") from None
            rows[key].append((box, action, score))
    if capacity > 0:
        for items in rows.values():
            items.sort(key=lambda r: -r[2])
            del items[capacity:]
    return dict(rows)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` normalised boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_keyframe(det_boxes, det_scores, gt_boxes, iou_threshold: float = 0.5) -> np.ndarray:
    """True-positive flags of one keyframe and one class (greedy by descending score)."""
    tp = np.zeros(len(det_boxes), dtype=bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return tp
    iou = _iou(np.asarray(det_boxes), np.asarray(gt_boxes))
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in np.argsort(-np.asarray(det_scores), kind="stable"):
        j = int(iou[i].argmax())
        if iou[i, j] >= iou_threshold and not taken[j]:
            tp[i] = taken[j] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC AP from detection ``scores`` and their TP flags; tied scores form one operating point."""
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order].astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    last = np.r_[scores[1:] != scores[:-1], True]  # last detection of each tie group
    precision, recall = (ctp / (ctp + cfp))[last], (ctp / num_gt)[last]
    r = np.r_[0.0, recall, 1.0]
    p = np.r_[0.0, precision, 0.0]
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    i = np.nonzero(r[1:] != r[:-1])[0] + 1
    return float(np.sum((r[i] - r[i - 1]) * p[i]))


def frame_ap(
    gt: dict, detections: dict, class_ids, iou_threshold: float = 0.5, excluded=frozenset()
) -> dict[int, float]:
    """Per-class AP from ``{keyframe: [(box, action_id, score), ...]}`` ground truth and detections."""
    class_ids = set(class_ids)
    scores, tps, num_gt = defaultdict(list), defaultdict(list), defaultdict(int)
    for key in set(gt) | set(detections):
        if key in excluded:
            continue
        g, d = gt.get(key, []), detections.get(key, [])
        for c in class_ids:
            gb = [b for b, a, _ in g if a == c]
            dd = [(b, s) for b, a, s in d if a == c]
            num_gt[c] += len(gb)
            if dd:
                boxes, s = np.stack([b for b, _ in dd]), np.array([s for _, s in dd])
                scores[c].append(s)
                tps[c].append(
                    match_keyframe(boxes, s, np.stack(gb) if gb else np.zeros((0, 4)), iou_threshold)
                )
    out = {}
    for c in sorted(class_ids):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        t = np.concatenate(tps[c]) if tps[c] else np.zeros(0, dtype=bool)
        out[c] = average_precision(s, t, num_gt[c])
    return out


def evaluate(
    gt_csv: str | Path,
    pred_csv: str | Path,
    label_map: str | Path | dict[int, str],
    exclusions: str | Path | None = None,
    iou_threshold: float = 0.5,
    subset_60: bool = False,
    capacity: int = 50,
) -> dict:
    """Frame-mAP of AVA-format predictions.

    Returns ``{"mAP": float (percent), "per_class": {id: (name, AP percent)}}``; classes absent from
    the ground truth are reported with AP ``nan`` and left out of the mean. ``subset_60`` restricts a
    full 80-class label map to the 60 challenge classes."""
    labels = read_label_map(label_map) if not isinstance(label_map, dict) else dict(label_map)
    if subset_60:
        labels = {k: v for k, v in labels.items() if k in AVA_60_CLASSES}
    excluded = read_exclusions(exclusions) if exclusions else set()
    gt = read_csv(gt_csv, with_scores=False)
    det = read_csv(pred_csv, with_scores=True, capacity=capacity)
    aps = frame_ap(gt, det, labels, iou_threshold, excluded)
    valid = [v for v in aps.values() if not np.isnan(v)]
    return {
        "mAP": 100.0 * float(np.mean(valid)) if valid else float("nan"),
        "per_class": {c: (labels[c], 100.0 * ap) for c, ap in aps.items()},
    }


def write_csv(path: str | Path, rows) -> None:
    """Write detection rows ``(video_id, timestamp, x1, y1, x2, y2, action_id, score)``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for vid, ts, x1, y1, x2, y2, a, s in rows:
            w.writerow(
                [
                    vid,
                    f"{int(ts):04d}",
                    f"{x1:.3f}",
                    f"{y1:.3f}",
                    f"{x2:.3f}",
                    f"{y2:.3f}",
                    int(a),
                    f"{s:.4f}",
                ]
            )
