"""Keyframe-centric token pruning vs brute-force attention, counts, identity at keep 1.0, w_kf."""

import math

import pytest
import torch

from kinetix.layers.token_pruning import (
    Block,
    KTPBlock,
    attention_with_importance,
    explicit_attention_importance,
    keyframe_first,
)
from kinetix.utils.flops import count_flops

S, N, C = 6, 30, 24  # 6 keyframe tokens out of 30 (5 slices of 2x3)


def _brute_importance(attn, x, num_key, w_kf):
    q, k, _ = attn.qkv_heads(x)
    p = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)  # (B, H, N, N)
    cols = p[..., num_key:].clone()
    cols[:, :, :num_key] *= w_kf  # keyframe-query rows
    return cols.mean(2).mean(1)  # over queries, then heads


@pytest.mark.parametrize("w_kf", [1.0, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_importance_and_output_match_brute_force(w_kf, dtype):
    blk = Block(C, 3).to(dtype)
    x = torch.randn(2, N, C, dtype=dtype)
    out, score = attention_with_importance(blk.attn, x, S, w_kf)  # CPU: two flash passes
    want = _brute_importance(blk.attn, x, S, w_kf).float()
    torch.testing.assert_close(score.float(), want, rtol=1e-5, atol=1e-7)
    q, k, v = blk.attn.qkv_heads(x)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, N, C)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("w_kf", [1.0, 4.0])
@pytest.mark.parametrize("chunk", [7, 1024])  # chunk boundaries inside and outside the keyframe rows
def test_explicit_importance_matches_brute_force(w_kf, chunk):
    blk = Block(C, 3).double()
    x = torch.randn(2, N, C, dtype=torch.float64)
    q, k, v = blk.attn.qkv_heads(x)
    out, score = explicit_attention_importance(q, k, v, S, w_kf, blk.attn.scale, chunk=chunk)
    torch.testing.assert_close(score, _brute_importance(blk.attn, x, S, w_kf))
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("rate", [0.7, 0.5, 0.25])
def test_pruning_keeps_keyframe_and_count_and_matches_unpruned_block(rate):
    plain = Block(C, 3).double().eval()
    ktp = KTPBlock(C, 3, keep_rate=rate).double().eval()
    ktp.load_state_dict(plain.state_dict())
    x = torch.randn(2, N, C, dtype=torch.float64)
    idx = torch.arange(100, 100 + N - S).expand(2, -1)  # arbitrary global ids
    y, new_idx = ktp(x, idx, S)
    n_keep = math.ceil(rate * N) - S
    assert y.shape == (2, S + n_keep, C) and new_idx.shape == (2, n_keep)
    # attention sees every token and the MLP is per token: kept outputs equal the unpruned block's
    full, _ = plain(x, idx, S)
    torch.testing.assert_close(y[:, :S], full[:, :S])  # keyframe tokens always kept, first
    pos = new_idx - 100
    torch.testing.assert_close(y[:, S:], full[:, S:].gather(1, pos[..., None].expand(-1, -1, C)))
    # the kept ones are the top-scoring ones, re-sorted by position
    score = _brute_importance(plain.attn, plain.norm1(x), S, 1.0)
    want = score.topk(n_keep, 1).indices.sort(1).values
    assert torch.equal(pos, want)


def test_keyframe_weight_changes_the_selection():
    torch.manual_seed(3)
    ktp1 = KTPBlock(C, 3, keep_rate=0.5).double().eval()
    ktp_big = KTPBlock(C, 3, keep_rate=0.5, keyframe_weight=1e6).double().eval()
    ktp_big.load_state_dict(ktp1.state_dict())
    x = torch.randn(1, N, C, dtype=torch.float64) * 3
    idx = torch.arange(N - S)[None]
    _, kept1 = ktp1(x, idx, S)
    _, kept_big = ktp_big(x, idx, S)
    # with a huge w_kf only the keyframe queries count: top-k of the attention they give
    q, k, _ = ktp1.attn.qkv_heads(ktp1.norm1(x))
    p = (q @ k.transpose(-2, -1) * ktp1.attn.scale).softmax(-1)
    n_keep = math.ceil(0.5 * N) - S
    want = p[:, :, :S, S:].sum((1, 2)).topk(n_keep, 1).indices.sort(1).values
    assert torch.equal(kept_big, want)
    assert not torch.equal(kept1, kept_big)


def test_score_order_option_keeps_the_same_tokens():
    a = KTPBlock(C, 3, keep_rate=0.6).eval()
    b = KTPBlock(C, 3, keep_rate=0.6, sort_kept=False).eval()
    b.load_state_dict(a.state_dict())
    x, idx = torch.randn(2, N, C), torch.arange(N - S).expand(2, -1)
    ya, ia = a(x, idx, S)
    yb, ib = b(x, idx, S)
    assert not torch.equal(ia, ib) and torch.equal(ia, ib.sort(1).values)
    order = ib.argsort(1)
    torch.testing.assert_close(ya[:, S:], yb[:, S:].gather(1, order[..., None].expand(-1, -1, C)))


def test_keyframe_first_order():
    x = torch.arange(5 * 4).float().view(1, 20, 1)  # 5 slices of 4 tokens
    y, key = keyframe_first(x, 5)
    assert key == 2
    assert y.flatten().tolist() == [8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17, 18, 19]


def test_flop_counter_sees_the_explicit_attention():
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blk = KTPBlock(C, 3, keep_rate=1.0)  # explicit attention, nothing dropped

        def forward(self, t):
            return self.blk(t, torch.arange(N - S)[None], S)[0]

    got = count_flops(Wrap(), torch.randn(1, N, C)).gmacs * 1e9
    linear = N * C * 3 * C + N * C * C + 2 * N * C * 4 * C
    attention = 2 * N * N * C  # q·kᵀ and p·v
    importance = 2 * (N - S) * N * 3 * 16  # the swapped pass: 3 heads of 8 + 1 channels, padded to 16
    assert got == pytest.approx(linear + attention + importance)
