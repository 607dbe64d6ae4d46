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
    b = SpaceTimeBlock(DIM, HEADS, attention, num_prefix_tokens=prefix, layout="time_major").train()
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
