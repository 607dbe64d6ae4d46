"""Metrics vs hand computation: top-k, mean-class accuracy, confusion, CSV and PNG reports."""

import csv

import torch

from kinetix.engine.metrics import ClassificationMeter, topk_correct


def test_meter_matches_hand_computed_values(tmp_path):
    # 3 classes, 6 samples; predictions chosen by hand
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.05],
            [0.2, 0.7, 0.1],
            [0.6, 0.3, 0.1],
            [0.1, 0.2, 0.7],
            [0.3, 0.45, 0.25],
            [0.5, 0.1, 0.4],
        ]
    )
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    meter = ClassificationMeter(3, ks=(1, 2))
    meter.update(scores[:4], labels[:4])  # batches accumulate
    meter.update(scores[4:], labels[4:])
    res = meter.compute()
    # argmax: 0,1,0,2,1,0 -> correct: T,T,F,T,F,F = 3/6
    assert res["top1"] == 50.0
    # top-2 misses only sample 4 (label 2 scored lowest)
    assert abs(res["top2"] - 100 * 5 / 6) < 1e-9
    # per class: c0 1/1, c1 1/2, c2 1/3 -> mean 0.6111
    assert abs(res["mean_class_acc"] - 100 * (1 + 0.5 + 1 / 3) / 3) < 1e-4
    assert meter.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert abs(meter.accuracy_on([1, 2]) - 100 * 2 / 5) < 1e-9

    meter.write_per_class_csv(tmp_path / "pc.csv", ["a", "b", "c"])
    rows = list(csv.DictReader((tmp_path / "pc.csv").read_text().splitlines()))
    assert [r["class_name"] for r in rows] == ["a", "b", "c"]
    assert [r["support"] for r in rows] == ["1", "2", "3"] and rows[1]["accuracy"] == "50.00"
    png = meter.plot_confusion(tmp_path / "cm.png", ["a", "b", "c"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # state round-trip (what DDP all-reduces)
    other = ClassificationMeter(3, ks=(1, 2))
    other.load_state(meter.state() * 2)
    assert other.compute()["top1"] == 50.0 and other.count == 12


def test_topk_caps_k_at_num_classes():
    s = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert topk_correct(s, torch.tensor([0, 0]), (1, 5)) == {1: 1, 5: 2}


def test_direction_accuracy_within_reversed_pairs():
    m = ClassificationMeter(5, ks=(1,))
    # pair (0, 1): 3 right, 1 swapped, 1 predicted outside the pair (ignored); pair (2, 3): 1 right, 1 swapped
    labels = torch.tensor([0, 0, 1, 1, 0, 2, 3])
    preds = torch.tensor([0, 1, 1, 1, 4, 2, 2])
    m.update(torch.nn.functional.one_hot(preds, 5).float(), labels)
    assert m.direction_accuracy([(0, 1), (2, 3)]) == 100.0 * 4 / 6
    assert m.accuracy_on([0, 1, 2, 3]) == 100.0 * 4 / 7
