import math

import pytest
import torch
import torch.nn.functional as F

from kinetix.layers.patch_embed import PatchEmbed, TubeletEmbed
from kinetix.layers.pos_embed import (
    resize_pos_embed,
    resize_pos_embed_3d,
    resize_time_embed,
    sinusoid_table,
    sinusoid_table_3d,
    tile_pos_embed,
)


@pytest.mark.parametrize("layout", ["space_major", "time_major"])
def test_patch_embed_equals_conv2d_per_frame(layout):
    pe = PatchEmbed(4, 3, 16, layout=layout)
    x = torch.randn(2, 3, 3, 10, 13)  # trailing pixels are dropped like a strided conv
    tok, grid = pe(x)
    assert grid == (3, 2, 3)
    ref = F.conv2d(x.transpose(1, 2).reshape(6, 3, 10, 13), pe.proj.weight, pe.proj.bias, stride=4)
    ref = ref.reshape(2, 3, 16, 2, 3)  # (B, T, D, h, w)
    if layout == "space_major":
        ref = ref.permute(0, 3, 4, 1, 2)  # (B, h, w, T, D)
    else:
        ref = ref.permute(0, 1, 3, 4, 2)  # (B, T, h, w, D)
    torch.testing.assert_close(tok, ref.reshape(2, 18, 16), atol=1e-5, rtol=1e-5)


def test_tubelet_embed_equals_conv3d():
    te = TubeletEmbed(4, 2, 3, 16)
    assert te.proj.weight.shape == (16, 3, 2, 4, 4)
    x = torch.randn(2, 3, 5, 8, 12)
    tok, grid = te(x)
    assert grid == (2, 2, 3)
    ref = te.proj(x).flatten(2).transpose(1, 2)  # (B, t*h*w, D), t-major like VideoMAE/ViViT
    torch.testing.assert_close(tok, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="smaller than one"):
        te(torch.randn(1, 3, 1, 8, 8))


def test_sinusoid_table_matches_definition():
    n, d = 7, 10
    table = sinusoid_table(n, d)
    assert table.shape == (1, n, d)
    for p in range(n):
        for i in range(d):
            angle = p / 10000 ** (2 * (i // 2) / d)
            ref = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(table[0, p, i].item() - ref) < 1e-6
    assert torch.equal(sinusoid_table_3d((2, 3, 3), None, d), sinusoid_table(18, d))
    # resizing the base table to its own grid is the identity; to another grid gives that many rows
    assert torch.equal(sinusoid_table_3d((2, 3, 3), (2, 3, 3), d), sinusoid_table(18, d))
    assert sinusoid_table_3d((4, 5, 6), (2, 3, 3), d).shape == (1, 120, d)


def test_pos_embed_resizing():
    pos = torch.randn(1, 1 + 4, 6)
    assert resize_pos_embed(pos, (2, 2), (2, 2)) is pos
    up = resize_pos_embed(pos, (2, 2), (4, 4), mode="nearest")
    assert up.shape == (1, 17, 6)
    torch.testing.assert_close(up[:, 0], pos[:, 0])
    grid = up[0, 1:].reshape(4, 4, 6)
    torch.testing.assert_close(grid[::2, ::2].reshape(4, 6), pos[0, 1:])
    # bicubic at the same number of tokens but a new aspect ratio keeps the CLS row
    assert resize_pos_embed(pos, (2, 2), (1, 3))[0, 0].equal(pos[0, 0])
    te = torch.randn(1, 4, 6)
    torch.testing.assert_close(resize_time_embed(te, 8)[0, ::2], te[0])
    p3 = torch.randn(1, 2 * 2 * 2, 6)
    assert resize_pos_embed_3d(p3, (2, 2, 2), (4, 2, 2)).shape == (1, 16, 6)
    tiled = tile_pos_embed(pos, 3)
    assert tiled.shape == (1, 13, 6) and torch.equal(tiled[0, 5:9], pos[0, 1:])
