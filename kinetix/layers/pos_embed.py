"""Positional embeddings for video transformers and their resizing to other clip sizes.

* ``resize_pos_embed``: learned ``(1, P + h*w, D)`` spatial table (``P`` prefix/CLS rows kept) resized
  to a new ``(h', w')`` grid (bicubic by default, as timm; TimeSformer's own code uses nearest).
* ``resize_time_embed``: learned ``(1, T, D)`` table resized over time (nearest, as TimeSformer).
* ``resize_pos_embed_3d``: learned ``(1, P + t*h*w, D)`` time-major table (ViViT) resized to a new
  ``(t', h', w')`` grid (trilinear).
* ``sinusoid_table``: fixed 1D sine/cosine table ``(1, N, D)`` of "Attention Is All You Need", as used by
  VideoMAE (``sin`` on even channels, ``cos`` on odd ones).
* ``tile_pos_embed``: image ``(1, P + h*w, D)`` table repeated over ``t`` time steps (ViViT init).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_pos_embed(
    pos: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> torch.Tensor:
    """``(1, P + h*w, D) -> (1, P + h'*w', D)`` (returned unchanged when the grid is the same)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    D = pos.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)  # (1, D, h, w)
    kw = {} if mode == "nearest" else {"align_corners": False}
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode=mode, **kw).to(pos.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, D)  # (1, h'*w', D)
    return torch.cat([prefix, grid], 1)


def resize_time_embed(time_embed: torch.Tensor, num_frames: int, mode: str = "nearest") -> torch.Tensor:
    """``(1, T, D) -> (1, T', D)``."""
    if time_embed.shape[1] == num_frames:
        return time_embed
    kw = {} if mode == "nearest" else {"align_corners": False}
    te = F.interpolate(time_embed.transpose(1, 2).float(), size=num_frames, mode=mode, **kw)
    return te.transpose(1, 2).to(time_embed.dtype)


def resize_pos_embed_3d(
    pos: torch.Tensor,
    old_grid: tuple[int, int, int],
    new_grid: tuple[int, int, int],
    num_prefix_tokens: int = 0,
    mode: str = "trilinear",
) -> torch.Tensor:
    """Time-major ``(1, P + t*h*w, D) -> (1, P + t'*h'*w', D)``."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    D = pos.shape[-1]
    grid = grid.reshape(1, *old_grid, D).permute(0, 4, 1, 2, 3)  # (1, D, t, h, w)
    kw = {} if mode == "nearest" else {"align_corners": False}
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode=mode, **kw).to(pos.dtype)
    grid = grid.permute(0, 2, 3, 4, 1).reshape(1, -1, D)  # (1, t'*h'*w', D)
    return torch.cat([prefix, grid], 1)


def sinusoid_table(num_positions: int, dim: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(1, N, D)``: ``[pos, i] = sin/cos(pos / 10000^(2*(i//2)/D))`` (sin at even i, cos at odd i)."""
    pos = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(dim, device=device)
    angle = pos / torch.pow(10000.0, (2 * (i // 2)).double() / dim)  # (N, D)
    table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(dtype).unsqueeze(0)


def sinusoid_table_3d(
    grid: tuple[int, int, int], base_grid: tuple[int, int, int] | None = None, dim: int = 768, **kw
) -> torch.Tensor:
    """VideoMAE's table for a time-major ``(t, h, w)`` token grid. With ``base_grid`` (the pre-training
    grid, e.g. ``(8, 14, 14)``) the ``prod(base_grid)``-row table is built and resized to ``grid``
    (bicubic per time slice as EVAD does, then linear over time); without it the table has
    ``prod(grid)`` rows (VideoMAE's own behaviour when built at another size)."""
    if base_grid is None or tuple(base_grid) == tuple(grid):
        return sinusoid_table(math.prod(grid), dim, **kw)
    bt, bh, bw = base_grid
    table = sinusoid_table(math.prod(base_grid), dim, **kw).reshape(bt, bh, bw, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid[1:], mode="bicubic", align_corners=False)  # (bt, D, h, w)
    if bt != grid[0]:
        table = table.permute(1, 2, 3, 0)  # (D, h, w, bt)
        table = F.interpolate(table.reshape(1, -1, bt), size=grid[0], mode="linear")  # (1, D*h*w, t)
        table = table.reshape(dim, grid[1], grid[2], grid[0]).permute(3, 0, 1, 2)
    return table.permute(0, 2, 3, 1).reshape(1, -1, dim)  # (1, t*h*w, D)


def tile_pos_embed(pos: torch.Tensor, num_times: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Image ``(1, P + h*w, D)`` -> time-major ``(1, P + t*h*w, D)`` (every time step shares the grid)."""
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    return torch.cat([prefix, grid.repeat(1, num_times, 1)], 1)
