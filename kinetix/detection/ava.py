"""Frame-mAP@0.5 with the AVA protocol (Gu et al., CVPR 2018; the ActivityNet AVA evaluator).

Ground truth and detections are AVA CSV rows ``video_id, timestamp, x1, y1, x2, y2, action_id[,
person_id | score]`` with boxes normalised to [0, 1]; a keyframe is ``(video_id, timestamp)``.
Rows are read by the one AVA row reader, :func:`kinetix.data.annotations.read_ava_rows`.

Which detections count (:func:`select_detections`), by ``protocol``:

* ``"activitynet"`` (default; the official ``get_ava_performance.py`` with ``-e`` and 50 detections
  per keyframe): rows whose action is not in the label map are dropped first; then each keyframe
  keeps its ``capacity`` (50) top-scoring rows, chosen as the official script's min-heap does — a
  later row displaces the smallest kept one only with a strictly higher score, and among kept rows of
  equal score the one with the smallest ``(action_id, y1, x1, y2, x2)`` goes first; the kept rows are
  sorted by descending score; boxes with ``x2 <= x1`` or ``y2 <= y1`` are then dropped (the
  TF object-detection evaluator removes them before matching).
* ``"slowfast"`` (PySlowFast's ``ava_eval_helper``, which EVAD's own numbers come from): label-map
  whitelist, no per-keyframe cap, rows matched in file order (no sorting); degenerate boxes dropped.

Per class and keyframe, detections are greedily matched in that order to the unmatched ground-truth
box of highest IoU ≥ 0.5 (a detection whose best box is taken is a false positive); detections on
keyframes without ground truth are false positives; excluded keyframes are dropped from both sides.

AP is the VOC (2010+) area under the interpolated precision/recall curve. Ties in score across
keyframes are one operating point (order-independent; the official script breaks them by NumPy's
unstable sort order, which is unspecified). A class with ground truth and no detection has AP 0; a
class absent from the ground truth has no AP and is left out of the mean (as in the official script).
"""

from __future__ import annotations

import csv
import heapq
from collections import defaultdict
from pathlib import Path

import numpy as np

from kinetix.data.annotations import parse_exclusions, parse_label_map, read_ava_rows
from kinetix.errors import ConfigError
from kinetix.utils.state_dict import atomic_path

# The 60 classes of the AVA v2.x ActivityNet challenge (those with >= 25 validation instances).
AVA_60_CLASSES = (
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 20, 22, 24, 26, 27, 28, 29, 30, 34, 36, 37,
    38, 41, 43, 45, 46, 47, 48, 49, 51, 52, 54, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68,
    69, 70, 72, 73, 74, 76, 77, 78, 79, 80,
)  # fmt: skip
PROTOCOLS = ("activitynet", "slowfast")

read_label_map = parse_label_map  # ``{id: name}`` from an AVA label-map pbtxt
read_exclusions = parse_exclusions  # ``{(video_id, timestamp)}`` from a ``video_id,timestamp`` CSV


def read_csv(path: str | Path, with_scores: bool) -> dict[tuple[str, int], list]:
    """``{keyframe: [(box (4,), action_id, score), ...]}`` from an AVA CSV, rows in file order.

    ``with_scores``: the 8th column is a score (detections); otherwise it is a person id (ignored)
    and every score is 1. Apply a protocol with :func:`select_detections`."""
    rows = defaultdict(list)
    for r in read_ava_rows(path, with_scores):
        rows[(r.video_id, r.timestamp)].append((np.array(r.box), r.action, r.last if with_scores else 1.0))
    return dict(rows)


def _top_rows(items: list, capacity: int) -> list:
    """The official script's per-keyframe selection: a min-heap of ``capacity`` entries
    ``(score, action_id, y1, x1, y2, x2)``, then sorted by descending score."""
    heap: list = []
    for box, a, s in items:
        x1, y1, x2, y2 = (float(v) for v in box)
        entry = (float(s), int(a), y1, x1, y2, x2)
        if len(heap) < capacity:
            heapq.heappush(heap, entry)
        elif entry[0] > heap[0][0]:
            heapq.heapreplace(heap, entry)
    heap.sort(key=lambda e: -e[0])  # stable, as Python's sorted() in the official script
    return [(np.array([x1, y1, x2, y2]), a, s) for s, a, y1, x1, y2, x2 in heap]


def select_detections(
    detections: dict, class_ids, protocol: str = "activitynet", capacity: int = 50
) -> dict[tuple[str, int], list]:
    """The detections a protocol evaluates (see the module docstring), per keyframe in match order."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"AVA protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    keep = set(class_ids)
    out = {}
    for key, items in detections.items():
        rows = [r for r in items if r[1] in keep]  # label-map whitelist first
        if protocol == "activitynet" and capacity > 0:
            rows = _top_rows(rows, capacity)
        out[key] = [r for r in rows if r[0][2] > r[0][0] and r[0][3] > r[0][1]]  # degenerate boxes
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` normalised boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_keyframe(
    det_boxes, det_scores, gt_boxes, iou_threshold: float = 0.5, sort: bool = True
) -> np.ndarray:
    """True-positive flags of one keyframe and one class: greedy, by descending score (``sort``;
    ties in input order) or in input order."""
    tp = np.zeros(len(det_boxes), dtype=bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return tp
    iou = _iou(np.asarray(det_boxes), np.asarray(gt_boxes))
    taken = np.zeros(len(gt_boxes), dtype=bool)
    order = np.argsort(-np.asarray(det_scores), kind="stable") if sort else range(len(det_boxes))
    for i in order:
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
    gt: dict, detections: dict, class_ids, iou_threshold: float = 0.5, excluded=frozenset(), sort: bool = True
) -> dict[int, float]:
    """Per-class AP from ``{keyframe: [(box, action_id, score), ...]}`` ground truth and detections
    (matched by descending score, or in the given order when ``sort`` is false)."""
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
                    match_keyframe(boxes, s, np.stack(gb) if gb else np.zeros((0, 4)), iou_threshold, sort)
                )
    out = {}
    for c in sorted(class_ids):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        t = np.concatenate(tps[c]) if tps[c] else np.zeros(0, dtype=bool)
        out[c] = average_precision(s, t, num_gt[c])
    return out


def frame_map(
    gt: dict,
    detections: dict,
    class_ids,
    excluded=frozenset(),
    protocol: str = "activitynet",
    capacity: int = 50,
    iou_threshold: float = 0.5,
) -> dict:
    """``{"mAP": percent, "per_class": {id: AP percent}}`` of in-memory rows under ``protocol``."""
    det = select_detections(detections, class_ids, protocol, capacity)
    aps = frame_ap(gt, det, class_ids, iou_threshold, excluded, sort=protocol == "activitynet")
    valid = [v for v in aps.values() if not np.isnan(v)]
    return {
        "mAP": 100.0 * float(np.mean(valid)) if valid else float("nan"),
        "per_class": {c: 100.0 * ap for c, ap in aps.items()},
    }


def evaluate(
    gt_csv: str | Path,
    pred_csv: str | Path,
    label_map: str | Path | dict[int, str],
    exclusions: str | Path | None = None,
    iou_threshold: float = 0.5,
    subset_60: bool = False,
    capacity: int = 50,
    protocol: str = "activitynet",
) -> dict:
    """Frame-mAP of AVA-format predictions (``protocol``: ``"activitynet"``, the official evaluator
    with ``capacity`` detections per keyframe, or ``"slowfast"``; see the module docstring).

    Returns ``{"mAP": float (percent), "per_class": {id: (name, AP percent)}}``; classes absent from
    the ground truth are reported with AP ``nan`` and left out of the mean. ``subset_60`` restricts a
    full 80-class label map to the 60 challenge classes."""
    labels = read_label_map(label_map) if not isinstance(label_map, dict) else dict(label_map)
    if subset_60:
        labels = {k: v for k, v in labels.items() if k in AVA_60_CLASSES}
    excluded = read_exclusions(exclusions) if exclusions else set()
    gt = read_csv(gt_csv, with_scores=False)
    det = read_csv(pred_csv, with_scores=True)
    res = frame_map(gt, det, labels, excluded, protocol, capacity, iou_threshold)
    return {"mAP": res["mAP"], "per_class": {c: (labels[c], ap) for c, ap in res["per_class"].items()}}


def write_csv(path: str | Path, rows) -> None:
    """Write detection rows ``(video_id, timestamp, x1, y1, x2, y2, action_id, score)`` (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
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
                    f"{s:.6f}",
                ]
            )
