import math

import pytest
import torch
import torch.nn as nn

from kinetix.layers.attention import Attention, record_attention
from kinetix.layers.drop import DropPath
from kinetix.layers.mlp import Mlp


def _reference_attention(attn: Attention, x, mask=None):
    """Explicit softmax(q k^T / sqrt(d)) v with separate per-head loops (no SDPA)."""
    C = x.shape[-1]
    H, hd = attn.num_heads, C // attn.num_heads
    w = attn.qkv.weight
    if attn.q_bias is not None:
        b = torch.cat([attn.q_bias, torch.zeros(C), attn.v_bias])
    else:
        b = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * C)
    qkv = x @ w.T + b
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    outs = []
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        s = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(hd)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        outs.append(s.softmax(-1) @ v[..., sl])
    return attn.proj(torch.cat(outs, -1))


@pytest.mark.parametrize("qv_bias_only", [False, True])
def test_attention_matches_explicit_softmax(qv_bias_only):
    attn = Attention(32, num_heads=4, qv_bias_only=qv_bias_only).eval()
    if qv_bias_only:
        assert attn.qkv.bias is None
        nn.init.normal_(attn.q_bias)
        nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x), atol=1e-5, rtol=1e-5)
    mask = torch.rand(7, 7) > 0.4
    mask |= torch.eye(7, dtype=torch.bool)
    torch.testing.assert_close(attn(x, mask), _reference_attention(attn, x, mask), atol=1e-5, rtol=1e-5)


def test_attention_qkv_heads_shapes_and_scale():
    attn = Attention(24, num_heads=3)
    q, k, v = attn.qkv_heads(torch.randn(2, 5, 24))
    assert q.shape == k.shape == v.shape == (2, 3, 5, 8)
    assert attn.scale == 8**-0.5
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, num_heads=3)


def test_mlp_keys_and_shape():
    m = Mlp(16, 64, 8)
    assert set(m.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    x = torch.randn(3, 16)
    torch.testing.assert_close(m(x), m.fc2(nn.functional.gelu(m.fc1(x))))
    assert m(x).shape == (3, 8)


def test_drop_path_per_sample():
    dp = DropPath(0.5)
    x = torch.ones(64, 3, 4)
    dp.eval()
    assert dp(x) is x
    dp.train()
    y = dp(x)
    per_sample = y.flatten(1)
    # each sample is either dropped entirely or scaled by 1/(1-p) as a whole
    assert torch.all((per_sample == 0).all(1) | (per_sample == 2.0).all(1))
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


# ---- attention probabilities for explanations (record_attention) ---------------------------------
def _by_hand_probs(attn: Attention, x, mask=None):
    """Per-head softmax(q k^T / sqrt(d)) with separate loops, ``(B, heads, N, N)``."""
    C = x.shape[-1]
    H, hd = attn.num_heads, C // attn.num_heads
    qkv = x @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0)
    q, k = qkv[..., :C], qkv[..., C : 2 * C]
    out = []
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        s = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(hd)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
        out.append(s.softmax(-1))
    return torch.stack(out, 1)


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_record_attention_logs_the_probabilities_and_keeps_the_output(mask_kind):
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    mask = None
    if mask_kind == "bool":
        mask = (torch.rand(7, 7) > 0.4) | torch.eye(7, dtype=torch.bool)
    elif mask_kind == "float":
        mask = torch.randn(7, 7)
    fast = attn(x, mask)
    with record_attention(attn, mean_heads=False) as log:
        slow = attn(x, mask)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    ((name, probs),) = log.calls
    assert name == "" and probs.shape == (2, 4, 7, 7)
    torch.testing.assert_close(probs, _by_hand_probs(attn, x, mask), atol=1e-6, rtol=1e-5)
    with record_attention(attn) as log:  # default: averaged over heads
        attn(x, mask)
    torch.testing.assert_close(log.of("")[0], probs.mean(1))
    assert attn.probs_log is None  # the SDPA path is back


def test_sdpa_path_is_the_default_and_returns_after_recording(monkeypatch):
    import kinetix.layers.attention as mod

    calls = []
    real = mod.F.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(mod.F, "scaled_dot_product_attention", counting)
    attn = Attention(16, num_heads=2).eval()
    x = torch.randn(1, 5, 16)
    attn(x)
    assert len(calls) == 1
    with record_attention(attn):
        attn(x)
    assert len(calls) == 1  # explicit softmax while recording
    with pytest.raises(RuntimeError), record_attention(attn):
        raise RuntimeError("boom")
    attn(x)
    assert len(calls) == 2 and attn.probs_log is None  # restored even after an error


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("test_timesformer", {}),
        ("test_timesformer", {"attention": "joint"}),
        ("test_timesformer", {"attention": "space"}),
        ("test_timesformer", {"attention": "axial"}),
        ("test_timesformer", {"attention": "local_global"}),
        ("test_vivit", {"model": 1}),
        ("test_vivit", {"model": 2}),
        ("test_vivit", {"model": 3}),
        ("test_vivit", {"model": 4}),
        ("test_videomae", {}),
        ("test_swin", {}),
    ],
)
def test_recording_leaves_every_layout_unchanged(name, kwargs):
    """Divided/axial/factorised layouts and the inference fusions see the same attention output
    whether it comes from SDPA or from the logged explicit probabilities."""
    from kinetix.models import create_model

    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    for p in model.parameters():  # zero-initialised temporal_fc / proj would hide the stages
        nn.init.normal_(p, std=0.2) if p.ndim > 1 else None
    cfg = model.pretrained_cfg
    x = torch.randn(2, 3, cfg.num_frames, cfg.input_size, cfg.input_size)
    with torch.inference_mode():
        fast = model(x)
    with torch.inference_mode(), record_attention(model) as log:
        slow = model(x)
    torch.testing.assert_close(slow, fast, atol=1e-4, rtol=1e-4)
    assert log.calls and all(torch.allclose(p.sum(-1), torch.ones(())) for _, p in log.calls)
