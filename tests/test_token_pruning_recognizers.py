"""Keyframe token pruning (``keep_rate``) in the ViT recognisers: VideoMAE, ViViT Model 1, TimeSformer joint.

The reference below is written independently of ``kinetix.layers.token_pruning``: it keeps the tokens
in their original layout, materialises the attention probabilities, ranks the non-key tokens by the
attention they receive (key-query rows weighted by w_kf), keeps the key tokens (CLS + keyframe slice
``t // 2``) plus the ``ceil(rate·N) − K`` best others, and runs the remaining blocks on them."""

import math

import pytest
import torch
import torch.nn.functional as F

from kinetix.layers.spacetime import SpaceTimeBlock
from kinetix.layers.token_pruning import KTPSpaceTimeBlock, default_prune_layers, keyframe_first
from kinetix.models import create_model
from kinetix.models._complexity import model_complexity
from kinetix.utils.flops import count_flops

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (builder kwargs, layout of the patch tokens, prefix tokens, patch input size per token)
MODELS = {
    "videomae": ("test_videomae", dict(num_frames=8, depth=4), "time_major", 0, 3 * 2 * 8 * 8),
    "vivit": ("test_vivit", dict(model=1, num_frames=8, depth=4), "time_major", 1, 3 * 2 * 8 * 8),
    "timesformer": ("test_timesformer", dict(attention="joint", depth=4), "space_major", 1, 3 * 8 * 8),
}


def _build(kind, **kw):
    name, base, *_ = MODELS[kind]
    return create_model(name, **{**base, **kw}).double().eval()


def _pair(kind, rate, w_kf=4.0):
    """An unpruned model and a pruned one with the same weights."""
    plain = _build(kind)
    pruned = _build(kind, keep_rate=rate, keyframe_weight=w_kf)
    pruned.load_state_dict(plain.state_dict())  # strict: same parameter names at every keep rate
    return plain, pruned


def _clip(kind, frames=None, h=32, w=32, b=2):
    frames = frames or (4 if kind == "timesformer" else 8)
    return torch.randn(b, 3, frames, h, w, dtype=torch.float64)


# ---- the brute-force reference -------------------------------------------------------------------
def _block_inputs(model, x):
    """The tokens entering the first block of the unpruned ``model`` (original layout) and the grid."""
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.update(x=args[0], grid=args[1]))
    model(x)
    hook.remove()
    return seen["x"], seen["grid"]


def _key_mask(grid, layout, prefix):
    """``(P + N,)`` True at the CLS and at the tokens of time slice ``t // 2``."""
    t, h, w = grid
    j = torch.arange(t * h * w)
    slice_of = j // (h * w) if layout == "time_major" else j % t
    return torch.cat([torch.ones(prefix, dtype=torch.bool), slice_of == t // 2])


def _ref_block(blk, x, is_key, prune, rate, w_kf):
    """One pre-norm block on one clip ``x (1, L, C)`` with explicit attention probabilities."""
    a, (_, L, C) = blk.attn, x.shape
    H, hd = a.num_heads, C // a.num_heads
    bias = a.qkv.bias if a.q_bias is None else torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
    q, k, v = F.linear(blk.norm1(x), a.qkv.weight, bias).view(L, 3, H, hd).permute(1, 2, 0, 3)  # (H, L, hd)
    p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), -1)  # (H, L, L): p[h, query, key]
    x = x + a.proj((p @ v).transpose(0, 1).reshape(1, L, C))
    if prune:
        w = torch.where(is_key, w_kf, 1.0).to(p)  # weight of every query row
        received = (w[None, :, None] * p).sum((0, 1)) / (H * L)  # (L,)
        n_keep = max(math.ceil(rate * L) - int(is_key.sum()), 0)
        others = (~is_key).nonzero().flatten()
        best = others[received[others].topk(n_keep).indices]
        keep = torch.cat([is_key.nonzero().flatten(), best]).sort().values  # original order
        x, is_key = x[:, keep], is_key[keep]
    return x + blk.mlp(blk.norm2(x)), is_key


def _reference(kind, plain, x, rate, w_kf, prune_layers):
    """Logits and the final (normed) key tokens, clip by clip."""
    _, _, layout, prefix, _ = MODELS[kind]
    tokens, grid = _block_inputs(plain, x)
    logits, keys = [], []
    for clip in tokens.split(1):
        is_key = _key_mask(grid, layout, prefix)
        for i, blk in enumerate(plain.blocks):
            clip, is_key = _ref_block(blk, clip, is_key, i in prune_layers, rate, w_kf)
        clip = plain.norm(clip)
        keys.append(clip[:, is_key])
        pooled = plain.fc_norm(clip.mean(1)) if kind == "videomae" else clip[:, 0]
        logits.append(plain.head(pooled))
    return torch.cat(logits), torch.cat(keys)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize(("rate", "w_kf"), [(0.7, 4.0), (0.5, 1.0)])
@pytest.mark.parametrize("size", ["built", "other"])
def test_pruned_model_matches_brute_force_reference(kind, rate, w_kf, size):
    plain, pruned = _pair(kind, rate, w_kf)
    x = _clip(kind) if size == "built" else _clip(kind, frames=6, h=40, w=48)  # other T and resolution
    want, want_keys = _reference(kind, plain, x, rate, w_kf, default_prune_layers(4))
    with torch.no_grad():
        got = pruned(x)
        feats = pruned.forward_features(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # the CLS and keyframe tokens survive every pruning block and come first
    torch.testing.assert_close(feats[:, : want_keys.shape[1]], want_keys, rtol=0, atol=1e-10)
    assert not torch.allclose(got, plain(x), atol=1e-6)  # pruning does change the output


# ---- keep 1.0: the unpruned model --------------------------------------------------------------
@pytest.mark.parametrize("kind", list(MODELS))
def test_keep_rate_one_is_the_unpruned_model(kind):
    plain = _build(kind)
    one = _build(kind, keep_rate=1.0, prune_layers=(0, 1, 2, 3))
    one.load_state_dict(plain.state_dict())
    assert all(type(b) is SpaceTimeBlock for b in one.blocks) and not one._keyframe_first
    x = _clip(kind)
    assert torch.equal(one(x), plain(x))
    # a pruning model whose blocks drop nothing: reordered tokens + importance pass, same output
    pruned = _build(kind, keep_rate=0.5)
    pruned.load_state_dict(plain.state_dict())
    for blk in pruned.blocks:
        if isinstance(blk, KTPSpaceTimeBlock):
            blk.keep_rate = 1.0
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), plain(x), rtol=0, atol=1e-12)


# ---- counts ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "rate", "block_inputs", "final"),
    [
        # 4x4x4 grid, keyframe 16 tokens; blocks 1, 2, 3 prune: each keeps max(ceil(rate·N), K) tokens
        ("videomae", 0.7, [64, 64, 45, 32], 23),  # ceil(44.8), ceil(31.5), ceil(22.4)
        ("vivit", 0.7, [65, 65, 46, 33], 24),  # CLS counts as a token: ceil(45.5), ceil(32.2), ceil(23.1)
        ("timesformer", 0.7, [65, 65, 46, 33], 24),
        ("vivit", 0.3, [65, 65, 20, 17], 17),  # ceil(6.0) < 1 + 16 key tokens: only CLS + keyframe left
        ("videomae", 0.1, [64, 64, 16, 16], 16),
    ],
)
def test_kept_token_counts(kind, rate, block_inputs, final):
    m = _build(kind, keep_rate=rate)
    assert [i for i, b in enumerate(m.blocks) if isinstance(b, KTPSpaceTimeBlock)] == [1, 2, 3]
    counts = []
    for blk in m.blocks:
        blk.register_forward_pre_hook(lambda mod, args: counts.append(args[0].shape[1]))
    with torch.no_grad():
        feats = m.forward_features(_clip(kind, b=1))
    assert counts == block_inputs and feats.shape[1] == final


def test_default_prune_layers_follow_evad():
    assert default_prune_layers(12) == (3, 6, 9)  # ViT-B: 4th, 7th, 10th blocks
    assert default_prune_layers(24) == (6, 12, 18)  # ViT-L: 7th, 13th, 19th blocks
    assert default_prune_layers(2) == (0, 1) and default_prune_layers(8) == (2, 4, 6)
    with torch.device("meta"):
        for name, want in [("videomae_base", [3, 6, 9]), ("videomae_large", [6, 12, 18]),
                           ("vivit_base_m1", [3, 6, 9]), ("timesformer_base_joint", [3, 6, 9])]:  # fmt: skip
            m = create_model(name, keep_rate=0.7)
            assert [i for i, b in enumerate(m.blocks) if isinstance(b, KTPSpaceTimeBlock)] == want, name


def test_keyframe_first_with_prefix_and_space_major():
    # CLS + 3 frames x 2 spots, space-major (spot, frame): token 1 + 3 * spot + frame
    x = torch.arange(7).float().view(1, 7, 1)
    y, key = keyframe_first(x, 3, num_prefix_tokens=1, space_major=True)
    assert key == 1 and y.flatten().tolist() == [0, 2, 5, 1, 4, 3, 6]  # CLS, frame 1, frame 0, frame 2
    y, _ = keyframe_first(x, 3, num_prefix_tokens=1)  # time-major (frame, spot): 1 + 2 * frame + spot
    assert y.flatten().tolist() == [0, 3, 4, 1, 2, 5, 6]


def test_key_tokens_survive_even_when_they_receive_the_least_attention():
    torch.manual_seed(1)
    grid, K, N = (3, 2, 2), 1 + 4, 1 + 12  # CLS + 3 slices of 2x2; key = CLS + slice 1
    plain = SpaceTimeBlock(16, 2, "joint", num_prefix_tokens=1).double().eval()
    ktp = KTPSpaceTimeBlock(16, 2, "joint", num_prefix_tokens=1, keep_rate=0.6, keyframe_weight=4.0)
    ktp.double().eval().load_state_dict(plain.state_dict())
    x = torch.randn(1, N, 16, dtype=torch.float64)
    x[:, :K] *= 0.01  # near-constant key tokens: after LayerNorm their keys carry ~no signal
    x[:, K:] *= 10
    q, k, _ = plain.attn.qkv_heads(plain.norm1(x))
    received = (q @ k.transpose(-2, -1) * plain.attn.scale).softmax(-1).mean((1, 2))[0]  # (N,)
    n_total = math.ceil(0.6 * N)  # 8 tokens kept in all
    assert not set(range(K)) <= set(received.topk(n_total).indices.tolist())  # a plain top-k would drop keys
    with torch.no_grad():
        y, full = ktp(x, grid), plain(x, grid)
    assert y.shape == (1, n_total, 16)
    torch.testing.assert_close(y[:, :K], full[:, :K])  # CLS and keyframe kept, first, unchanged
    # the others are unpruned-block outputs of non-key tokens (attention saw all, the MLP is per token)
    dist = torch.cdist(y[0, K:], full[0, K:])
    assert (dist.min(1).values < 1e-10).all()


# ---- cost --------------------------------------------------------------------------------------
def _analytic_macs(m, grid, prefix, patch_in, rate, prune_layers):
    """Patch embedding + per block qkv, QKᵀ, PV, proj, MLP on the tokens it sees (+ the importance
    pass of a pruning block: the swapped flash pass, head dim + 1 padded to a multiple of 8) + head."""
    C, H, depth = m.embed_dim, m.blocks[0].attn.num_heads, len(m.blocks)
    hidden, d_pad = m.blocks[0].mlp.fc1.out_features, math.ceil((C // H + 1) / 8) * 8
    t, h, w = grid
    n, K = prefix + t * h * w, prefix + h * w
    macs = t * h * w * patch_in * C + C * m.num_classes
    for i in range(depth):
        macs += n * C * 3 * C + 2 * n * n * C + n * C * C
        if i in prune_layers:
            macs += 2 * H * (n - K) * n * d_pad
            n = max(math.ceil(rate * n), K)
        macs += 2 * n * C * hidden
    return macs


@pytest.mark.parametrize("kind", list(MODELS))
def test_gmacs_follow_the_token_counts(kind):
    _, _, _, prefix, patch_in = MODELS[kind]
    full, half = _build(kind).float(), _build(kind, keep_rate=0.5).float()
    for frames, hw, grid in [
        (None, 32, (4, 4, 4)),
        (6, 48, (3, 6, 6) if kind != "timesformer" else (6, 6, 6)),
    ]:
        x = _clip(kind, frames, hw, hw, b=1).float()
        g_full, g_half = count_flops(full, x).gmacs * 1e9, count_flops(half, x).gmacs * 1e9
        assert g_full == pytest.approx(_analytic_macs(full, grid, prefix, patch_in, 1.0, ()), rel=1e-9)
        assert g_half == pytest.approx(_analytic_macs(half, grid, prefix, patch_in, 0.5, (1, 2, 3)), rel=1e-9)
        assert g_half < g_full


def test_meta_device_count_matches_cpu():
    kw = dict(num_frames=8, depth=4, keep_rate=0.7)
    meta = model_complexity("test_videomae", **kw).gmacs  # `kinetix flops` counts on the meta device
    cpu = count_flops(create_model("test_videomae", **kw), _clip("videomae", b=1).float()).gmacs
    assert meta == pytest.approx(cpu, rel=1e-12)


# ---- training and bad arguments --------------------------------------------------------------
def test_pruned_model_trains():
    m = create_model("test_videomae", num_frames=8, depth=4, keep_rate=0.5, drop_path_rate=0.1).train()
    F.cross_entropy(m(torch.randn(2, 3, 8, 32, 32)), torch.tensor([0, 1])).backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("test_vivit", dict(model=2), "model 1"),
        ("test_vivit", dict(model=3), "model 1"),
        ("test_vivit", dict(model=4), "model 1"),
        ("test_timesformer", dict(attention="divided"), "joint"),
        ("test_timesformer", dict(attention="space"), "joint"),
        ("test_timesformer", dict(attention="local_global"), "joint"),
        ("test_timesformer", dict(attention="axial"), "joint"),
        ("test_videomae", dict(use_mean_pooling=False), "mean_pooling"),
        ("test_videomae", dict(prune_layers=(1, 2)), "below depth 2"),
    ],
)
def test_unsupported_variants_raise(name, kw, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, keep_rate=0.7, **kw)


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5])
def test_keep_rate_out_of_range_raises(rate):
    with pytest.raises(ValueError, match="keep_rate"):
        create_model("test_videomae", keep_rate=rate)


def test_ktp_block_needs_joint_attention():
    with pytest.raises(ValueError, match="joint"):
        KTPSpaceTimeBlock(16, 2, "divided", keep_rate=0.5)
