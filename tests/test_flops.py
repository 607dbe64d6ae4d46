"""GMAC counting against analytic counts, including CPU SDPA (which torch's counter misses)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.models import create_model
from kinetix.models._complexity import example_input, model_complexity
from kinetix.utils import count_flops


def test_linear_and_conv_analytic():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    res = count_flops(m, torch.zeros(2, 3, 16, 16))
    conv = 2 * 8 * 16 * 16 * 3 * 9
    fc = 2 * 8 * 16 * 16 * 10
    assert res.gmacs * 1e9 == conv + fc
    assert res.params == sum(p.numel() for p in m.parameters())


class _SDPA(nn.Module):
    def __init__(self, mask=None):
        super().__init__()
        self.mask = mask

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def test_cpu_sdpa_is_counted():
    b, h, n, s, d = 2, 3, 10, 12, 16
    q, k, v = torch.zeros(b, h, n, d), torch.zeros(b, h, s, d), torch.zeros(b, h, s, d)
    expected = 2 * b * h * n * s * d  # QK^T + AV, in MACs
    assert count_flops(_SDPA(), (q, k, v)).gmacs * 1e9 == expected
    mask = torch.ones(n, s, dtype=torch.bool)
    assert count_flops(_SDPA(mask), (q, k, v)).gmacs * 1e9 == expected


def test_meta_device_count_matches_real():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    x = torch.zeros(1, 3, 4, 8, 8)
    m(x)
    real = count_flops(m, x).gmacs
    with torch.device("meta"):
        mm = nn.Sequential(nn.Conv3d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 6 * 6, 5))
    assert count_flops(mm, torch.zeros(1, 3, 4, 8, 8, device="meta")).gmacs == real


def test_fused_multihead_attention_is_counted():
    """nn.MultiheadAttention's CPU inference path is one fused op that torch's counter ignores;
    it is counted as its projections plus QK^T and AV, on CPU and on the meta device alike."""
    b, n, s, e = 2, 10, 7, 16
    expected = b * (n * e * e + 2 * s * e * e + n * e * e + 2 * n * s * e)  # q, k+v, out proj; QK^T + AV
    mha = nn.MultiheadAttention(e, 4, batch_first=True).eval()
    x, kv = torch.zeros(b, n, e), torch.zeros(b, s, e)
    assert round(count_flops(mha, (x, x, x)).gmacs * 1e9) == b * (4 * n * e * e + 2 * n * n * e)
    assert round(count_flops(mha, (x, kv, kv)).gmacs * 1e9) == expected
    with torch.device("meta"):
        meta = nn.MultiheadAttention(e, 4, batch_first=True).eval()
    assert round(count_flops(meta, (x.to("meta"), kv.to("meta"), kv.to("meta"))).gmacs * 1e9) == expected


def test_detector_counts_on_meta_as_on_cpu():
    """EVAD (RoIAlign level grouping, person thresholding) is counted on the meta device, where
    ``kinetix models`` counts it in a second, with the same GMACs as a real forward pass."""
    torch.manual_seed(0)
    model = create_model("test_evad").eval()
    real = count_flops(model, example_input(model)).gmacs
    assert real > 0 and model_complexity("test_evad").gmacs == pytest.approx(real, rel=1e-9)
    with torch.device("meta"):
        meta = create_model("test_evad").eval()
    count_flops(meta, example_input(meta, device="meta"))  # no fallback to a real forward needed


def test_cli_flops_passes_model_arguments(capsys):
    """``kinetix flops --set``: constructor arguments change the count; bad ones are clear errors."""
    import json

    from kinetix.cli.main import main

    def gmacs(*extra):
        assert main(["flops", "test_videomae", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["gmacs"]

    full, pruned = gmacs(), gmacs("--set", "keep_rate=0.5")
    assert 0 < pruned < 0.8 * full
    assert main(["flops", "test_videomae", "--set", "keep_rate"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["flops", "test_videomae", "--set", "keep_rate=1.5"]) == 2
    assert "keep_rate" in capsys.readouterr().err
    assert main(["flops", "test_videomae", "--set", "no_such_arg=1"]) == 2
    assert "no_such_arg" in capsys.readouterr().err
