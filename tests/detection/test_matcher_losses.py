"""Hungarian matcher vs brute force over all assignments; loss parts vs hand values."""

import itertools
import math

import torch
import torch.nn.functional as F

from kinetix.detection.boxes import generalized_box_iou
from kinetix.detection.losses import DetectionCriterion
from kinetix.detection.matcher import HungarianMatcher


def _boxes(n, g, size=100.0):
    xy = torch.rand(n, 2, generator=g) * size * 0.6
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * size * 0.4 + 2], -1)


def test_cost_matrix_entries_and_assignment_vs_brute_force():
    g = torch.Generator().manual_seed(0)
    P, M, size = 6, 3, (80, 120)
    logits, boxes = torch.randn(P, 2, generator=g), _boxes(P, g)
    tgt = {"labels": torch.zeros(M, dtype=torch.int64), "boxes": _boxes(M, g), "size": size}
    m = HungarianMatcher()
    c = m.cost_matrix(logits, boxes, tgt["labels"], tgt["boxes"], size)
    scale = torch.tensor([120.0, 80, 120, 80])
    for i, j in itertools.product(range(P), range(M)):
        p = logits[i].softmax(-1)[0]
        l1 = ((boxes[i] - tgt["boxes"][j]) / scale).abs().sum()
        giou = generalized_box_iou(boxes[i : i + 1], tgt["boxes"][j : j + 1])[0, 0]
        torch.testing.assert_close(c[i, j], -2 * p + 5 * l1 - 2 * giou)
    ((rows, cols),) = m(logits[None], boxes[None], [tgt])
    best = min(itertools.permutations(range(P), M), key=lambda r: sum(c[r[j], j] for j in range(M)))
    assert sum(c[r, k] for r, k in zip(rows, cols)) <= sum(c[best[j], j] for j in range(M)) + 1e-6
    assert len(set(rows.tolist())) == M and sorted(cols.tolist()) == list(range(M))


def test_perfect_prediction_losses_and_deep_supervision():
    size = (64, 96)
    gt = torch.tensor([[10.0, 5, 40, 60], [50, 10, 90, 50]])
    boxes = torch.stack([gt[1], torch.tensor([0.0, 0, 20, 20]), gt[0]])[None]  # (1, 3, 4)
    logits = torch.tensor([[[3.0, -3.0], [-1.0, 2.0], [2.0, 0.0]]])
    actions = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    act_logits = torch.randn(1, 3, 3)
    tgt = [{"labels": torch.zeros(2, dtype=torch.int64), "boxes": gt, "actions": actions, "size": size}]
    crit = DetectionCriterion(action_weight=12.0)
    out = crit([logits], [boxes], [act_logits], tgt)
    assert out["loss_l1"].item() == 0 and abs(out["loss_giou"].item()) < 1e-6
    # CE: proposals 0 and 2 are persons (weight 1), proposal 1 is no-object (weight 0.1)
    lp = logits[0].log_softmax(-1)
    ce = -(lp[0, 0] + lp[2, 0] + 0.1 * lp[1, 1]) / 2.1
    torch.testing.assert_close(out["loss_ce"], ce)
    bce = F.binary_cross_entropy_with_logits(act_logits[0, [0, 2]], actions[[1, 0]])
    torch.testing.assert_close(out["loss_action"], bce)
    torch.testing.assert_close(out["loss"], 2 * ce + 12 * bce)
    # deep supervision: two identical stages and two decoder layers double every part
    out2 = crit([logits, logits], [boxes, boxes], [act_logits, act_logits], tgt)
    torch.testing.assert_close(out2["loss"], 2 * out["loss"])


def test_box_loss_normalisation_and_empty_targets():
    size = (100, 100)
    gt = torch.tensor([[10.0, 10, 30, 30]])
    boxes = torch.tensor([[[12.0, 10, 30, 34]]])
    tgt = [
        {"labels": torch.zeros(1, dtype=torch.int64), "boxes": gt, "actions": torch.ones(1, 2), "size": size},
        {
            "labels": torch.zeros(0, dtype=torch.int64),
            "boxes": torch.zeros(0, 4),
            "actions": torch.zeros(0, 2),
            "size": size,
        },
    ]
    logits = torch.zeros(2, 1, 2)
    out = DetectionCriterion()(
        [logits], [torch.cat([boxes, boxes])], [torch.zeros(2, 1, 2, requires_grad=True)], tgt
    )
    torch.testing.assert_close(out["loss_l1"], torch.tensor(0.06))  # (2 + 4) / 100, one target
    iou = 18 * 20 / (20 * 20 + 18 * 24 - 18 * 20)
    hull = 20 * 24
    union = 20 * 20 + 18 * 24 - 18 * 20
    torch.testing.assert_close(out["loss_giou"], torch.tensor(1 - (iou - (hull - union) / hull)))
    torch.testing.assert_close(out["loss_ce"], torch.tensor(math.log(2)))
