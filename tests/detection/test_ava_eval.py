"""AVA frame-mAP on hand-computed cases."""

import math

import numpy as np
import pytest

from kinetix.detection.ava import AVA_60_CLASSES, average_precision, evaluate, frame_ap
from kinetix.errors import AnnotationError

A = np.array([0.1, 0.1, 0.4, 0.5])
B = np.array([0.5, 0.2, 0.9, 0.9])
NEAR_A = np.array([0.12, 0.1, 0.4, 0.52])  # IoU with A ≈ 0.88
OFF = np.array([0.0, 0.6, 0.2, 1.0])  # IoU with A and B = 0


def test_ap_hand_values():
    # TP, FP, TP with 2 GT: P = 1, 1/2, 2/3 at R = 1/2, 1/2, 1 -> AP = 1/2·1 + 1/2·2/3
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 2) == pytest.approx(5 / 6)
    # ranked perfectly, half the GT missed -> AP 0.5
    assert average_precision(np.array([0.9]), np.array([True]), 2) == pytest.approx(0.5)
    # the envelope: FP first, then TP -> P = 0, 1/2 at R = 0, 1 -> AP 0.5
    assert average_precision(np.array([0.9, 0.8]), np.array([0, 1], bool), 1) == pytest.approx(0.5)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_ties_are_one_operating_point_in_any_order():
    # scores 0.9 TP, then a tie at 0.5 of one FP and one TP; 2 GT.
    # operating points: (R 1/2, P 1) and (R 1, P 2/3) -> AP = 5/6, whatever the input order
    for order in ([0, 1, 2], [0, 2, 1]):
        s = np.array([0.9, 0.5, 0.5])[order]
        t = np.array([1, 0, 1], bool)[order]
        assert average_precision(s, t, 2) == pytest.approx(5 / 6)


def test_frame_ap_matching_rules():
    gt = {("v", 902): [(A, 1, 1.0), (B, 1, 1.0), (A, 2, 1.0)], ("v", 903): [(B, 1, 1.0)]}
    det = {
        ("v", 902): [(NEAR_A, 1, 0.9), (A, 1, 0.8), (OFF, 1, 0.7)],  # 2nd hits an already matched box
        ("v", 903): [(B, 1, 0.6)],
        ("w", 902): [(B, 1, 0.95)],  # keyframe without ground truth -> FP
    }
    aps = frame_ap(gt, det, class_ids=[1, 2, 3])
    # class 1: 3 GT; ranked 0.95 FP, 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP
    # P = 0, 1/2, 1/3, 1/4, 2/5 at R = 0, 1/3, 1/3, 1/3, 2/3 -> envelope 1/2 up to R 1/3, 2/5 to 2/3
    assert aps[1] == pytest.approx(1 / 3 * 1 / 2 + 1 / 3 * 2 / 5)
    assert aps[2] == 0.0  # ground truth, no detection
    assert math.isnan(aps[3])  # absent from the ground truth
    # excluding the extra keyframe removes its FP: P = 1, 1/2, 1/3, 1/2 at R = 1/3, 1/3, 1/3, 2/3
    aps = frame_ap(gt, det, class_ids=[1], excluded={("w", 902)})
    assert aps[1] == pytest.approx(1 / 3 + 1 / 3 * 1 / 2)


def _write(path, rows):
    path.write_text("".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def test_evaluate_from_files(tmp_path):
    lm = tmp_path / "labels.pbtxt"
    lm.write_text(
        'item {\n  name: "stand"\n  id: 1\n}\nitem {\n  name: "sit"\n  id: 2\n}\nitem {\n  name: "x"\n  id: 3\n}\n'
    )
    gt = _write(tmp_path / "gt.csv", [
        ["v", "0902", *A, 1, 0], ["v", "0902", *B, 2, 1], ["v", "0903", *A, 1, 0], ["u", "0902", *A, 1, 0],
    ])  # fmt: skip
    pred = _write(tmp_path / "pred.csv", [
        ["v", "0902", *A, 1, 0.9], ["v", "0902", *B, 2, 0.8], ["v", "0903", *OFF, 1, 0.95],
        ["u", "0902", *A, 1, 0.3], ["v", "0902", *A, 7, 0.99],  # class 7 is not in the label map
    ])  # fmt: skip
    # class 1: 3 GT; 0.95 FP, 0.9 TP, 0.3 TP -> P 0, 1/2, 2/3 at R 0, 1/3, 2/3 -> 2/3·2/3; class 2: AP 1
    res = evaluate(gt, pred, lm)
    assert res["per_class"][1][1] == pytest.approx(100 * 4 / 9)
    assert res["per_class"][2][1] == pytest.approx(100.0)
    assert math.isnan(res["per_class"][3][1])
    assert res["mAP"] == pytest.approx(100 * (4 / 9 + 1) / 2)
    excl = _write(tmp_path / "excl.csv", [["v", "0903"]])
    res = evaluate(gt, pred, lm, exclusions=excl)  # class 1: 2 GT, both found in order -> 1
    assert res["per_class"][1][1] == pytest.approx(100.0)
    # capacity 1, official order: the label-map whitelist comes first, so v,0902 keeps its class-1
    # row (0.9), not the class-7 row (0.99) -> class 1 unchanged at 4/9 (top-1 over all classes
    # first would leave class 1 with 0.95 FP, 0.3 TP -> 1/6)
    assert evaluate(gt, pred, lm, capacity=1)["per_class"][1][1] == pytest.approx(100 * 4 / 9)
    assert evaluate(gt, pred, lm, capacity=1)["per_class"][2][1] == 0.0  # 0.8 < 0.9: cut
    assert set(evaluate(gt, pred, lm, subset_60=True)["per_class"]) == {1, 3}


def test_bad_files_name_the_line(tmp_path):
    lm = {1: "stand"}
    gt = _write(tmp_path / "gt.csv", [["v", "0902", *A, 1, 0]])
    pred = _write(tmp_path / "pred.csv", [["v", "0902", *A, 1, 0.5], ["v", "0902", *A, 1]])
    with pytest.raises(AnnotationError, match=r"pred.csv:2: expected 8 fields"):
        evaluate(gt, pred, lm)
    bad = tmp_path / "lm.pbtxt"
    bad.write_text('item { name: "a" }')
    with pytest.raises(AnnotationError, match=r"lm\.pbtxt"):
        evaluate(gt, gt, bad)


def test_60_class_subset():
    assert len(AVA_60_CLASSES) == 60 and len(set(AVA_60_CLASSES)) == 60
    assert 2 not in AVA_60_CLASSES and 80 in AVA_60_CLASSES


# ---- the official protocol (ActivityNet get_ava_performance.py, -e, 50 per keyframe) -------------
ZERO_W = np.array([0.3, 0.1, 0.3, 0.5])  # x2 == x1: degenerate


def _files(tmp_path, gt_rows, pred_rows, labels=((1, "stand"), (2, "sit"))):
    lm = tmp_path / "lm.pbtxt"
    lm.write_text("".join(f'item {{ name: "{n}" id: {i} }}\n' for i, n in labels))
    return _write(tmp_path / "gt.csv", gt_rows), _write(tmp_path / "pred.csv", pred_rows), lm


def test_degenerate_boxes_are_dropped_not_false_positives(tmp_path):
    gt, pred, lm = _files(tmp_path, [["v", "0902", *A, 1, 0]],
                          [["v", "0902", *ZERO_W, 1, 0.99], ["v", "0902", *A, 1, 0.9]])  # fmt: skip
    # dropped: 0.9 TP alone -> AP 1 (counted as a false positive it would be 0.99 FP, 0.9 TP -> 1/2)
    assert evaluate(gt, pred, lm)["per_class"][1][1] == pytest.approx(100.0)
    # ... but only after the per-keyframe cap, as in the official script: with capacity 1 the
    # degenerate row takes the one place and is then dropped -> nothing left -> AP 0
    assert evaluate(gt, pred, lm, capacity=1)["per_class"][1][1] == 0.0


def test_cap_ties_keep_the_earlier_row(tmp_path):
    # the official min-heap replaces a kept row only for a strictly higher score
    gt_rows = [["v", "0902", *A, 1, 0], ["v", "0902", *B, 2, 1]]
    rows = [["v", "0902", *A, 1, 0.5], ["v", "0902", *B, 2, 0.5]]
    gt, pred, lm = _files(tmp_path, gt_rows, rows)
    res = evaluate(gt, pred, lm, capacity=1)["per_class"]
    assert (res[1][1], res[2][1]) == (100.0, 0.0)
    _write(pred, rows[::-1])
    res = evaluate(gt, pred, lm, capacity=1)["per_class"]
    assert (res[1][1], res[2][1]) == (0.0, 100.0)


def test_slowfast_protocol_matches_in_file_order_without_cap(tmp_path):
    # both detections overlap A (IoU >= 0.5); the lower-scored one comes first in the file
    gt, pred, lm = _files(tmp_path, [["v", "0902", *A, 1, 0]],
                          [["v", "0902", *NEAR_A, 1, 0.3], ["v", "0902", *A, 1, 0.9]])  # fmt: skip
    # activitynet: sorted, 0.9 TP then 0.3 FP -> AP 1; slowfast: the 0.3 row takes A, 0.9 is FP ->
    # ranked 0.9 FP, 0.3 TP -> P 1/2 at R 1 -> AP 1/2
    assert evaluate(gt, pred, lm)["per_class"][1][1] == pytest.approx(100.0)
    assert evaluate(gt, pred, lm, protocol="slowfast")["per_class"][1][1] == pytest.approx(50.0)
    # no cap: capacity is ignored
    assert evaluate(gt, pred, lm, capacity=1, protocol="slowfast")["per_class"][1][1] == pytest.approx(50.0)


def _reference_map(gt_rows, det_rows, labels, capacity, whitelist_first=True):
    """The official rules written out directly (distinct scores, so no tie questions): per keyframe,
    label-map whitelist, then the top ``capacity`` rows, degenerate boxes dropped; per class, every
    detection in descending score order takes the unmatched ground-truth box of its keyframe with
    the highest IoU if that is >= 0.5; VOC AP over the interpolated precision envelope."""

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    per_key = {}
    for r in det_rows:
        per_key.setdefault((r[0], r[1]), []).append(r)
    kept = []
    for rows in per_key.values():
        if whitelist_first:
            rows = [r for r in rows if r[6] in labels]
        rows = sorted(rows, key=lambda r: -r[7])[:capacity]
        kept += [r for r in rows if r[6] in labels and r[4] > r[2] and r[5] > r[3]]
    aps = {}
    for c in labels:
        gts = [r for r in gt_rows if r[6] == c]
        if not gts:
            continue
        used = [False] * len(gts)
        tp = []
        for d in sorted((r for r in kept if r[6] == c), key=lambda r: -r[7]):
            cands = [(iou(d[2:6], g[2:6]), j) for j, g in enumerate(gts) if (g[0], g[1]) == (d[0], d[1])]
            best, j = max(cands, default=(0.0, -1))
            hit = best >= 0.5 and not used[j]
            if hit:
                used[j] = True
            tp.append(hit)
        precision, recall, hits = [], [], 0
        for n, t in enumerate(tp, 1):
            hits += t
            precision.append(hits / n)
            recall.append(hits / len(gts))
        ap, prev_r = 0.0, 0.0
        for i, r in enumerate(recall):
            if r > prev_r:
                ap += (r - prev_r) * max(precision[i:])
                prev_r = r
        aps[c] = 100 * ap
    return aps


def test_evaluate_equals_an_independent_reference_on_evad_style_output(tmp_path):
    """EVAD scores every box for all classes, most of them outside the label map: the whitelist must
    come before the 50-per-keyframe cap, and zero-width rows must not count."""
    rng = np.random.default_rng(0)
    labels = {1: "a", 2: "b", 3: "c"}  # the label map; the model also scores classes 4..12
    gt_rows, det_rows = [], []
    for v in ("v1", "v2"):
        for ts in range(902, 908):
            people = rng.uniform([0, 0, 0.5, 0.5], [0.4, 0.4, 1, 1], size=(2, 4)).round(3)
            for p in people:
                gt_rows.append((v, ts, *p, int(rng.integers(1, 4)), 0))
            for k in range(5):  # 5 proposals x 12 classes = 60 rows per keyframe
                box = (
                    (people[k % 2] + rng.normal(0, 0.05, 4)).clip(0, 1).round(3)
                    if k < 4
                    else rng.uniform(0, 1, 4).round(3)
                )
                if k == 3:
                    box[2] = box[0]  # a zero-width proposal
                for c in range(1, 13):
                    det_rows.append((v, ts, *box, c, 0.0))
    scores = rng.permutation(len(det_rows)) / len(det_rows)  # distinct scores
    det_rows = [(*r[:7], float(s)) for r, s in zip(det_rows, scores)]
    gt, pred, lm = _files(tmp_path, gt_rows, det_rows, labels.items())
    for capacity in (50, 8):
        res = evaluate(gt, pred, lm, capacity=capacity)
        ref = _reference_map(gt_rows, det_rows, labels, capacity)
        assert set(ref) == {c for c, (_, ap) in res["per_class"].items() if ap == ap}
        for c, ap in ref.items():
            assert res["per_class"][c][1] == pytest.approx(ap, abs=1e-9)
        assert res["mAP"] == pytest.approx(sum(ref.values()) / len(ref), abs=1e-9)
    # the order matters on this file: capping over all classes first gives other numbers
    wrong = _reference_map(gt_rows, det_rows, labels, 8, whitelist_first=False)
    assert sum(wrong.values()) / len(wrong) < evaluate(gt, pred, lm, capacity=8)["mAP"] - 1
