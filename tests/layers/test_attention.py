import math

import pytest
import torch
import torch.nn as nn

from kinetix.layers.attention import Attention
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
