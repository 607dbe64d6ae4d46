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
    # capacity 1 keeps only the top detection per keyframe: v,0902 keeps class 7 -> class 2 AP 0
    assert evaluate(gt, pred, lm, capacity=1)["per_class"][2][1] == 0.0
    assert set(evaluate(gt, pred, lm, subset_60=True)["per_class"]) == {1, 3}


def test_bad_files_name_the_line(tmp_path):
    lm = {1: "stand"}
    gt = _write(tmp_path / "gt.csv", [["v", "0902", *A, 1, 0]])
    pred = _write(tmp_path / "pred.csv", [["v", "0902", *A, 1, 0.5], ["v", "0902", *A, 1]])
    with pytest.raises(AnnotationError, match=r"pred.csv:2: expected 8 columns"):
        evaluate(gt, pred, lm)
    bad = tmp_path / "lm.pbtxt"
    bad.write_text('item { name: "a" }')
    with pytest.raises(AnnotationError, match=r"lm\.pbtxt"):
        evaluate(gt, gt, bad)


def test_60_class_subset():
    assert len(AVA_60_CLASSES) == 60 and len(set(AVA_60_CLASSES)) == 60
    assert 2 not in AVA_60_CLASSES and 80 in AVA_60_CLASSES
