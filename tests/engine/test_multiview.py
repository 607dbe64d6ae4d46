"""Multi-view aggregation (logit mean / probability mean), distinct-view counting, time reversal."""

import pytest
import torch

from kinetix.engine.multiview import aggregate_views, check_views, count_distinct_views, predict_views


def test_aggregation_against_direct_computation():
    logits = torch.randn(2, 5, 7)
    assert torch.allclose(aggregate_views(logits, "logits"), logits.mean(1))
    probs = aggregate_views(logits, "probs").exp()
    direct = torch.stack([sum(torch.softmax(logits[b, v], -1) for v in range(5)) / 5 for b in range(2)])
    assert torch.allclose(probs, direct, atol=1e-6)
    # the two can disagree: one confident view vs several mild ones
    x = torch.tensor([[[10.0, 0.0], [0.0, 3.0], [0.0, 3.0]]])
    assert aggregate_views(x, "logits").argmax() == 0 and aggregate_views(x, "probs").argmax() == 1
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_views(logits, "max")


def test_distinct_views_and_duplicate_warning():
    a, b = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    views = torch.stack([a, b, a.clone(), b + 1e-9])
    assert count_distinct_views(views) == 2
    with pytest.warns(UserWarning, match="only 2 of 4 test views are distinct"):
        assert check_views(views) == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_views(torch.stack([a, b])) == 2


class FirstFrameModel(torch.nn.Module):
    """Logits = channel means of the first frame: sensitive to time order."""

    def forward(self, x):  # (N, C, T, H, W) -> (N, C)
        return x[:, :, 0].mean(dim=(-1, -2))


def test_predict_views_matches_per_view_loop_and_reverses_time():
    model = FirstFrameModel()
    views = torch.randn(2, 3, 4, 5, 6, 6)  # (B, V, C, T, H, W)
    want = torch.stack(
        [torch.stack([model(views[b, v : v + 1])[0] for v in range(3)]).mean(0) for b in range(2)]
    )
    assert torch.allclose(predict_views(model, views), want, atol=1e-6)
    rev = predict_views(model, views, reverse_frames=True)
    want_rev = views[:, :, :, -1].mean(dim=(-1, -2)).mean(1)  # first frame of the reversed clip = last
    assert torch.allclose(rev, want_rev, atol=1e-6)
    single = predict_views(model, views[:, 0])  # (B, C, T, H, W) is one view
    assert torch.allclose(single, model(views[:, 0]), atol=1e-6)
