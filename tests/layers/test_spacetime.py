import itertools

import pytest
import torch

from kinetix.layers.spacetime import (
    ATTENTION_TYPES,
    SpaceTimeBlock,
    add_linear,
    local_global_mask,
    token_coords,
)

DIM, HEADS = 16, 4


def _block(attention, layout="space_major", prefix=1, **kw):
    b = SpaceTimeBlock(DIM, HEADS, attention, layout=layout, num_prefix_tokens=prefix, **kw).eval()
    for p in b.parameters():  # random everything, including the zero-initialised *_fc
        torch.nn.init.normal_(p, std=0.3)
    return b


def _share(dst, src):
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in dst.state_dict()}, strict=False)


def _same_except(coords, axes):
    """(N, N) mask: tokens that agree on every coordinate not in ``axes`` (0=t, 1=h, 2=w)."""
    keep = [i for i in range(3) if i not in axes]
    return (coords[:, None, keep] == coords[None, :, keep]).all(-1)


def _reference(block, x, grid):
    """Every stage as a masked joint attention over all tokens (no prefix tokens)."""
    c = token_coords(grid, block.layout)
    masks = {
        "time": _same_except(c, [0]),
        "space": _same_except(c, [1, 2]),
        "width": _same_except(c, [2]),
        "height": _same_except(c, [1]),
    }
    plan = {
        "joint": [("", None)],
        "divided": [("temporal_", "time"), ("", "space")],
        "space": [("", "space")],
        "axial": [("temporal_", "time"), ("width_", "width"), ("", "height")],
        "factorised": [("", "space"), ("temporal_", "time")],
        "local_global": [("local_", "L"), ("", "G")],
    }[block.attention]
    for prefix, m in plan:
        if m == "L" or m == "G":
            mask = local_global_mask(grid, block.layout, 0, "local" if m == "L" else "global")
        else:
            mask = masks.get(m)
        res = getattr(block, f"{prefix}attn")(getattr(block, f"{prefix}norm1")(x), mask)
        fc = getattr(block, f"{prefix}fc", None)
        x = x + (fc(res) if fc is not None else res)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("attention", ["joint", "divided", "space", "axial", "factorised", "local_global"])
@pytest.mark.parametrize("layout", ["space_major", "time_major"])
def test_block_equals_masked_joint_reference(attention, layout):
    grid = (3, 4, 5)
    b = _block(attention, layout, prefix=0)
    x = torch.randn(2, 60, DIM)
    ref = _reference(b, x, grid)
    torch.testing.assert_close(b(x, grid), ref, atol=2e-5, rtol=1e-4)
    with torch.no_grad():  # inference path: residual adds folded into the GEMMs
        torch.testing.assert_close(b(x, grid), ref, atol=2e-5, rtol=1e-4)
    with torch.inference_mode():  # + *_fc composed with proj
        torch.testing.assert_close(b(x, grid), ref, atol=2e-5, rtol=1e-4)
    xg = x.clone().requires_grad_()  # gradients through the in-place written outputs
    (g_ref,) = torch.autograd.grad(_reference(b, xg, grid).square().sum(), xg)
    (g,) = torch.autograd.grad(b(xg, grid).square().sum(), xg)
    torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


def test_divided_with_one_frame_equals_space_only_block():
    grid = (1, 3, 4)
    div = SpaceTimeBlock(DIM, HEADS, "divided").eval()  # temporal_fc is zero at init
    space = _block("space")
    _share(div, space)
    x = torch.randn(2, 1 + 12, DIM)
    torch.testing.assert_close(div(x, grid), space(x, grid), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(div(x, grid), space(x, grid), atol=1e-6, rtol=1e-6)
    torch.nn.init.normal_(div.temporal_fc.weight)  # the property hinges on the zero temporal_fc
    assert not torch.allclose(div(x, grid), space(x, grid), atol=1e-3)


def test_space_block_cls_is_frame_average():
    """CLS repeated per frame, attends spatially, and its residual is averaged over frames."""
    grid = (3, 2, 2)
    b = _block("space", layout="time_major")
    x = torch.randn(1, 1 + 12, DIM)
    out = b(x, grid)
    joint = _block("joint")
    _share(joint, b)
    frames = x[:, 1:].reshape(3, 4, DIM)
    per_frame = torch.cat([x[:, :1].expand(3, 1, DIM), frames], 1)  # (T, 1+HW, C)
    ref_cls = x[:, 0] + (b.attn(b.norm1(per_frame))[:, 0]).mean(0)
    ref_cls = ref_cls + b.mlp(b.norm2(ref_cls))
    torch.testing.assert_close(out[:, 0], ref_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0, 1:].reshape(3, 4, DIM), joint(per_frame)[:, 1:], atol=1e-5, rtol=1e-5)


def test_factorised_dot_all_heads_on_space_equals_spatial_attention():
    grid = (3, 2, 3)
    fdp = _block("factorised_dot", "time_major", prefix=0, num_time_heads=0)
    space = _block("space", "time_major", prefix=0)
    _share(space, fdp)
    x = torch.randn(2, 18, DIM)
    torch.testing.assert_close(fdp(x, grid), space(x, grid), atol=1e-6, rtol=1e-6)


def test_factorised_dot_splits_heads_between_time_and_space():
    grid, nt = (3, 2, 3), 1
    b = _block("factorised_dot", "time_major", prefix=0, num_time_heads=nt)
    x = torch.randn(2, 18, DIM)
    c = token_coords(grid, "time_major")
    time_mask, space_mask = _same_except(c, [0]), _same_except(c, [1, 2])
    q, k, v = b.attn.qkv_heads(b.norm1(x))  # (B, h, N, hd)
    outs = []
    for h in range(HEADS):
        s = q[:, h] @ k[:, h].transpose(-1, -2) * b.attn.scale
        s = s.masked_fill(~(time_mask if h < nt else space_mask), float("-inf"))
        outs.append(s.softmax(-1) @ v[:, h])
    y = x + b.attn.proj(torch.cat(outs, -1))
    torch.testing.assert_close(b(x, grid), y + b.mlp(b.norm2(y)), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="prefix"):
        SpaceTimeBlock(DIM, HEADS, "factorised_dot", num_prefix_tokens=1)


@pytest.mark.parametrize("layout", ["space_major", "time_major"])
def test_local_global_mask_matches_brute_force(layout):
    T, H, W = grid = (4, 6, 5)
    P = 1
    if layout == "space_major":
        order = [(t, h, w) for h in range(H) for w in range(W) for t in range(T)]
    else:
        order = [(t, h, w) for t in range(T) for h in range(H) for w in range(W)]
    n = P + len(order)
    for kind in ("local", "global"):
        ref = torch.ones(n, n, dtype=torch.bool)
        for (i, a), (j, b) in itertools.product(enumerate(order), repeat=2):
            if kind == "local":  # the T x H/2 x W/2 neighbourhood centred on the query
                ok = abs(a[1] - b[1]) <= H // 4 and abs(a[2] - b[2]) <= W // 4
            else:  # stride 2 over t, h and w
                ok = all((a[d] - b[d]) % 2 == 0 for d in range(3))
            ref[P + i, P + j] = ok
        assert torch.equal(local_global_mask(grid, layout, P, kind), ref)


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
def test_every_scheme_accepts_any_grid_and_has_identity_extra_stages(attention):
    prefix = 0 if attention == "factorised_dot" else 1
    b = SpaceTimeBlock(
        DIM, HEADS, attention, num_prefix_tokens=prefix, layout="time_major", drop_path=0.3
    ).train()
    for grid in [(2, 3, 3), (5, 2, 4), (1, 1, 1)]:
        x = torch.randn(2, prefix + grid[0] * grid[1] * grid[2], DIM, requires_grad=True)
        y = b(x, grid)
        assert y.shape == x.shape
        y.sum().backward()
        assert torch.isfinite(x.grad).all()
    # every *_fc starts at zero
    for name, p in b.named_parameters():
        if name.split(".")[0].endswith("_fc"):
            assert p.abs().sum() == 0


def test_add_linear_matches_plain_expression_and_is_counted():
    from kinetix.utils.flops import count_flops

    lin = torch.nn.Linear(8, 6)
    x, h = torch.randn(2, 5, 6), torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(add_linear(x, h, lin), x + lin(h))
        buf = torch.zeros(2, 1 + 5, 6)  # out= a strided view (the patch part of a prefix + patch buffer)
        assert add_linear(x, h, lin, out=buf[:, 1:]).data_ptr() == buf[:, 1:].data_ptr()
        torch.testing.assert_close(buf[:, 1:], x + lin(h))
        assert buf[:, 0].abs().sum() == 0
    assert add_linear(x, h, lin).requires_grad  # autograd path
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast path
        assert add_linear(x, h.bfloat16(), lin).dtype == torch.float32

    class M(torch.nn.Module):
        def forward(self, h):
            return add_linear(x, h, lin)

    assert count_flops(M(), h).gmacs * 1e9 == pytest.approx(2 * 5 * 8 * 6)  # the fused GEMM is counted


@pytest.mark.parametrize("attention", ["divided", "axial", "local_global"])
def test_inference_mode_composes_fc_with_proj_and_tracks_weight_changes(attention):
    """Under inference_mode ``*_fc ∘ proj`` runs as one cached GEMM: same output as the two-GEMM
    no_grad path, and the cache follows in-place weight updates (optimiser steps, load_state_dict)."""
    torch.manual_seed(0)
    blk = SpaceTimeBlock(DIM, HEADS, attention).eval()
    for name, p in blk.named_parameters():
        if "_fc" in name:
            torch.nn.init.normal_(p, std=0.2)  # non-zero, or the composition would be trivially exact
    grid = (2, 4, 4)
    x = torch.randn(2, 1 + 32, DIM)
    for _ in range(2):
        with torch.no_grad():
            ref = blk(x, grid)
        with torch.inference_mode():
            got = blk(x, grid)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            for name, p in blk.named_parameters():
                if "_fc" in name or "attn.proj" in name:
                    p.mul_(1.5)  # in place: the cached composition must be recomputed
    assert not torch.allclose(ref, blk.eval()(x, grid).detach())


# ---- stochastic depth in training mode ------------------------------------------------------------
class _RecordingDropPath(torch.nn.Module):
    """A DropPath(p) that records its per-sample draws (the MLP branch)."""

    def __init__(self, p):
        super().__init__()
        self.drop_prob, self.draws = p, []

    def forward(self, x):
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.drop_prob) / (
            1 - self.drop_prob
        )
        self.draws.append(keep)
        return x * keep


def _record_draws(block, p=0.5):
    """Train mode with drop-path ``p``; returns the list that collects every attention-stage draw."""
    draws, keep = [], block._keep
    block.drop_path = _RecordingDropPath(p)

    def recording(x, shape=None):
        k = keep(x, shape)
        draws.append(k)
        return k

    block._keep = recording
    return draws


def _official_divided(blk, x, grid, m_t, m_s, m_mlp):
    """facebookresearch/TimeSformer ``vit.py`` ``Block.forward`` (divided_space_time) written out, with
    each ``self.drop_path`` replaced by the mask of the batch it sees there: the temporal residual is
    computed on ``(b h w) t m`` (``m_t``: one draw per (b, h, w)) and goes through ``temporal_fc``
    *after* the drop; the spatial residual on ``(b t) (1 + h w) m`` (``m_s``: one per (b, t), the CLS
    copy of frame t included, then the CLS residual is averaged over t); the MLP per sample."""
    T, H, W = grid
    B, _, C = x.shape
    xt = x[:, 1:].reshape(B * H * W, T, C)  # 'b (h w t) m -> (b h w) t m'
    res_t = blk.temporal_attn(blk.temporal_norm1(xt)) * m_t.view(-1, 1, 1)
    res_t = blk.temporal_fc(res_t.reshape(B, H * W * T, C))  # '(b h w) t m -> b (h w t) m', then fc
    xt = x[:, 1:] + res_t
    init_cls = x[:, :1]  # (B, 1, C)
    cls = init_cls.repeat(1, T, 1).reshape(B * T, 1, C)
    xs = xt.reshape(B, H, W, T, C).permute(0, 3, 1, 2, 4).reshape(B * T, H * W, C)  # '(b t) (h w) m'
    res_s = blk.attn(blk.norm1(torch.cat([cls, xs], 1))) * m_s.view(-1, 1, 1)
    cls_res = res_s[:, 0].reshape(B, T, C).mean(1, keepdim=True)  # averaged over frames
    res_p = res_s[:, 1:].reshape(B, T, H, W, C).permute(0, 2, 3, 1, 4).reshape(B, H * W * T, C)
    x = torch.cat([init_cls, xt], 1) + torch.cat([cls_res, res_p], 1)
    return x + blk.mlp(blk.norm2(x)) * m_mlp.view(-1, 1, 1)


def test_divided_drop_path_masks_follow_official_timesformer():
    torch.manual_seed(0)
    T, H, W = grid = (3, 2, 4)
    B = 4
    blk = _block("divided", "space_major", prefix=1).train()  # random weights, temporal_fc included
    draws = _record_draws(blk)
    x = torch.randn(B, 1 + T * H * W, DIM)
    y = blk(x, grid)
    m_t, m_s = draws  # temporal stage, then spatial stage
    # the mask structure: one draw per (b, h, w) over time, one per (b, t) over space
    assert m_t.shape == (B, H, W, 1, 1) and m_s.shape == (B, 1, 1, T, 1)
    assert set(m_t.unique().tolist()) == {0.0, 2.0} and set(m_s.unique().tolist()) == {0.0, 2.0}
    (m_mlp,) = blk.drop_path.draws
    ref = _official_divided(blk, x, grid, m_t.reshape(-1), m_s.reshape(-1), m_mlp.reshape(-1))
    torch.testing.assert_close(y, ref, atol=2e-5, rtol=1e-4)
    # the draws matter: one sample-wide draw per stage gives another output
    per_sample = _official_divided(blk, x, grid, m_t[:, :1, :1].expand(-1, H, W, -1, -1).reshape(-1),
                                   m_s[..., :1, :].expand(-1, -1, -1, T, -1).reshape(-1), m_mlp.reshape(-1))  # fmt: skip
    assert not torch.allclose(y, per_sample, atol=1e-3)


@pytest.mark.parametrize(
    ("attention", "expected"),
    [  # per stage, over (B, H, W, T): 1 = one draw per index of that axis, 0 = shared (attended axis)
        ("divided", [(1, 1, 1, 0), (1, 0, 0, 1)]),  # time: per (b, h, w); space: per (b, t)
        (
            "axial",
            [(1, 1, 1, 0), (1, 1, 0, 1), (1, 0, 1, 1)],
        ),  # time, width: per (b, h, t), height: per (b, w, t)
        ("factorised", [(1, 0, 0, 1), (1, 1, 1, 0)]),  # space then time
    ],
)
def test_axis_stage_drop_path_is_per_attention_group(attention, expected):
    """Every axis stage draws once per attention group (the tokens that attend together), as the
    official TimeSformer drop path on the folded batch; checked against the masked joint reference
    with each token's residual scaled by its group's draw (no prefix tokens)."""
    torch.manual_seed(1)
    T, H, W = grid = (3, 4, 2)
    B = 3
    blk = _block(attention, "space_major", prefix=0).train()
    draws = _record_draws(blk)
    x = torch.randn(B, T * H * W, DIM)
    y = blk(x, grid)
    shapes = [(*(d if keep else 1 for d, keep in zip((B, H, W, T), e)), 1) for e in expected]
    assert [tuple(d.shape) for d in draws] == shapes
    c = token_coords(grid, "space_major")
    masks = {"time": _same_except(c, [0]), "space": _same_except(c, [1, 2]),
             "width": _same_except(c, [2]), "height": _same_except(c, [1])}  # fmt: skip
    plan = {
        "divided": [("temporal_", "time"), ("", "space")],
        "axial": [("temporal_", "time"), ("width_", "width"), ("", "height")],
        "factorised": [("", "space"), ("temporal_", "time")],
    }[attention]
    ref = x
    for (prefix, axis), keep in zip(plan, draws):
        per_token = keep.expand(B, H, W, T, 1).reshape(B, -1, 1)  # (B, N, 1) in space-major order
        res = getattr(blk, f"{prefix}attn")(getattr(blk, f"{prefix}norm1")(ref), masks[axis]) * per_token
        fc = getattr(blk, f"{prefix}fc", None)
        ref = ref + (fc(res) if fc is not None else res)
    ref = ref + blk.mlp(blk.norm2(ref)) * blk.drop_path.draws[0]
    torch.testing.assert_close(y, ref, atol=2e-5, rtol=1e-4)


def test_eval_and_zero_drop_path_draw_nothing():
    blk = _block("divided").train()
    blk.drop_path.drop_prob = 0.0
    x = torch.randn(2, 1 + 12, DIM)
    torch.testing.assert_close(blk(x, (3, 2, 2)), blk.eval()(x, (3, 2, 2)))


# ---- TimeSformer L+G and axial: brute force over explicit neighbour sets ---------------------------
# Bertasius et al. (ICML 2021) §3 / Fig. 2: "Sparse Local Global attention (L+G) first computes a local
# attention by considering the neighboring F x H/2 x W/2 patches and then calculates a sparse global
# attention over the entire clip using a stride of 2 patches along the temporal dimension and also the
# two spatial dimensions"; "Axial attention decomposes the attention computation in three distinct
# steps: over time, width and height". Decisions recorded in kinetix (not in the paper): the local window
# is centred on the query and clipped at the border, the global stride is anchored at the query (keys
# at even offsets), the CLS token attends to and is seen by every patch in both L+G stages; in axial
# attention the CLS takes part in the height step only, one copy per (t, w) column, averaged back.
def _index(layout, grid, P):
    """Position of patch (t, h, w) in the token sequence: official TimeSformer space-major
    ``1 + (h*W + w)*T + t``, or time-major ``(t*H + h)*W + w`` (ViViT/VideoMAE)."""
    T, H, W = grid
    if layout == "space_major":
        return lambda t, h, w: P + (h * W + w) * T + t
    return lambda t, h, w: P + (t * H + h) * W + w


def _attend_one(attn, qkv, i, keys):
    """Query token ``i`` over the token indices ``keys``; plain softmax per head: ``(C,)`` before proj."""
    heads = []
    for hh in range(attn.num_heads):
        q, k, v = qkv[i, 0, hh], qkv[keys, 1, hh], qkv[keys, 2, hh]
        s = (k @ q) * q.shape[-1] ** -0.5
        p = torch.exp(s - s.max())
        heads.append((p / p.sum()) @ v)
    return torch.cat(heads)


def _qkv(attn, xn):
    """``(N, C)`` normed tokens -> ``(N, 3, heads, hd)`` from the fused qkv Linear (timm/official layout)."""
    return attn.qkv(xn).view(xn.shape[0], 3, attn.num_heads, -1)


def _brute_local_global(blk, x, grid):
    T, H, W = grid
    idx = _index(blk.layout, grid, 1)
    every = list(range(x.shape[0]))
    rh, rw = (H // 2 - 1) // 2, (W // 2 - 1) // 2  # a window of H/2 x W/2 patches centred on the query

    def local(t, h, w):
        return [idx(t2, h2, w2) for t2 in range(T) for h2 in range(max(0, h - rh), min(H, h + rh + 1))
                for w2 in range(max(0, w - rw), min(W, w + rw + 1))]  # fmt: skip

    def global_(t, h, w):  # stride 2 along t, h and w through the query
        return [
            idx(t2, h2, w2)
            for t2 in range(t % 2, T, 2)
            for h2 in range(h % 2, H, 2)
            for w2 in range(w % 2, W, 2)
        ]

    for prefix, neighbours in (("local_", local), ("", global_)):
        attn, qkv = (
            getattr(blk, f"{prefix}attn"),
            _qkv(getattr(blk, f"{prefix}attn"), getattr(blk, f"{prefix}norm1")(x)),
        )
        out = torch.empty_like(x)
        out[0] = _attend_one(attn, qkv, 0, every)  # the CLS sees every token
        for t in range(T):
            for h in range(H):
                for w in range(W):
                    out[idx(t, h, w)] = _attend_one(attn, qkv, idx(t, h, w), [0, *neighbours(t, h, w)])
        res = attn.proj(out)
        fc = getattr(blk, f"{prefix}fc", None)
        x = x + (fc(res) if fc is not None else res)
    return x + blk.mlp(blk.norm2(x))


def _brute_axial(blk, x, grid):
    T, H, W = grid
    idx = _index(blk.layout, grid, 1)
    steps = [
        ("temporal_", lambda t, h, w: [idx(t2, h, w) for t2 in range(T)]),
        ("width_", lambda t, h, w: [idx(t, h, w2) for w2 in range(W)]),
        ("", lambda t, h, w: [0] + [idx(t, h2, w) for h2 in range(H)]),  # + the column's CLS copy
    ]
    for prefix, line in steps:
        attn = getattr(blk, f"{prefix}attn")
        qkv = _qkv(attn, getattr(blk, f"{prefix}norm1")(x))
        out = torch.zeros_like(x)
        for t in range(T):
            for h in range(H):
                for w in range(W):
                    out[idx(t, h, w)] = _attend_one(attn, qkv, idx(t, h, w), line(t, h, w))
        res = attn.proj(out)
        fc = getattr(blk, f"{prefix}fc", None)
        res = fc(res) if fc is not None else res
        if prefix == "":  # CLS: one copy per (t, w) column attends over it; residuals averaged
            cols = [attn.proj(_attend_one(attn, qkv, 0, line(t, 0, w))) for t in range(T) for w in range(W)]
            res[0] = torch.stack(cols).mean(0)
        else:
            res[0] = 0.0  # the CLS does not take part in the time and width steps
        x = x + res
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("layout", ["space_major", "time_major"])
@pytest.mark.parametrize("attention", ["local_global", "axial"])
def test_local_global_and_axial_match_brute_force_neighbour_sets(attention, layout):
    torch.manual_seed(2)
    grid = (3, 6, 10)  # H/2 = 3 and W/2 = 5 patches: odd windows, centred without ambiguity
    blk = _block(attention, layout, prefix=1)
    x = torch.randn(1 + 3 * 6 * 10, DIM)
    ref = (_brute_local_global if attention == "local_global" else _brute_axial)(blk, x, grid)
    with torch.no_grad():
        torch.testing.assert_close(blk(x[None], grid)[0], ref, atol=2e-5, rtol=1e-4)
