"""Space-time token layouts and one transformer block for every video-attention scheme.

Schemes (``attention=``), each a layout or a mask around the one :class:`~.attention.Attention`:

* ``"joint"``: all tokens attend to all (TimeSformer joint ST, ViViT Model 1, VideoMAE, plain ViT).
* ``"divided"``: time then space (TimeSformer, Bertasius et al. ICML 2021): temporal attention per
  spatial location (prefix/CLS tokens do not take part), a zero-initialised ``temporal_fc``, then
  spatial attention per frame with the CLS token repeated in every frame and its outputs averaged back.
* ``"space"``: spatial attention per frame only (CLS handled as in ``"divided"``).
* ``"local_global"``: TimeSformer's sparse L+G: local attention over the ``T x H/2 x W/2`` neighbourhood
  (``|dh| <= H//4``, ``|dw| <= W//4``, every frame) then sparse global attention over the tokens with
  the same parity in t, h and w (stride 2 in every axis), both as attention masks over all tokens
  (prefix tokens see and are seen by every token). The masks are dense, so L+G costs as much as two
  joint attentions: it reproduces the paper's attention pattern, not a sparse kernel.
* ``"axial"``: TimeSformer's axial T+W+H: separate attentions over time, width, then height (the CLS
  token takes part in the height stage only, repeated per (t, w) column and averaged back).
* ``"factorised"``: ViViT Model 3 (Arnab et al. ICCV 2021): ``x + MSA_s(LN_s(x))`` and ``x + MSA_t(LN_t(x))``
  in the configurable ``order`` (default space then time), then the MLP.
* ``"factorised_dot"``: ViViT Model 4: the first ``num_time_heads`` heads attend over time, the rest
  over space; outputs are concatenated and share ``attn.proj``.

Parameter names follow the official TimeSformer code: the stage that attends over space (or over the
whole clip) uses ``norm1``/``attn``; extra stages are ``temporal_norm1``/``temporal_attn``(/``temporal_fc``),
``width_*`` (axial) and ``local_*`` (L+G). Every ``*_fc`` starts at zero, so at initialisation each
block equals a block with its last attention stage only (image-ViT initialisation keeps working).

Stochastic depth (training): a stage that attends along some grid axes draws one keep/drop per
attention group, as the official TimeSformer applies ``DropPath`` to the folded batch (per (b, h, w)
in the temporal step, per (b, t) in the spatial step, where the CLS copy of frame t shares frame t's
draw before the CLS residuals are averaged); stages over the whole clip (joint, L+G, factorised
dot-product) and the MLP draw once per sample.

Input ``x``: ``(B, P + N, C)`` with ``P = num_prefix_tokens`` (CLS) first and ``N = T*H*W`` patch
tokens in ``layout`` order: ``"space_major"`` (``(h w t)``, official TimeSformer) or ``"time_major"``
(``(t h w)``, ViViT/VideoMAE); ``grid = (T, H, W)`` in tokens. Output: same shape. The scheme is
resolved into a list of stages in ``__init__``; ``forward`` only runs them.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.utils.inference import FastLinear

from .attention import Attention
from .drop import DropPath
from .mlp import Mlp

ATTENTION_TYPES = ("joint", "divided", "space", "local_global", "axial", "factorised", "factorised_dot")
LAYOUTS = ("space_major", "time_major")
# grid axis (t, h, w) -> dimension of the 5D patch view (B, d1, d2, d3, C)
_AXIS_DIM = {"space_major": {"t": 3, "h": 1, "w": 2}, "time_major": {"t": 1, "h": 2, "w": 3}}
_STAGE_AXES = {"time": ("t",), "space": ("h", "w"), "width": ("w",), "height": ("h",)}


def patch_view(x: torch.Tensor, grid: tuple[int, int, int], layout: str, num_prefix_tokens: int):
    """``(B, P + T*H*W, C)`` -> prefix ``(B, P, C)`` and the patch tokens as a 5D view
    ``(B, H, W, T, C)`` (space-major) or ``(B, T, H, W, C)`` (time-major). No copy."""
    T, H, W = grid
    B, _, C = x.shape
    shape = (B, H, W, T, C) if layout == "space_major" else (B, T, H, W, C)
    return x[:, :num_prefix_tokens], x[:, num_prefix_tokens:].view(shape)


def token_coords(grid: tuple[int, int, int], layout: str) -> torch.Tensor:
    """``(N, 3)`` integer ``(t, h, w)`` of every patch token in ``layout`` order."""
    T, H, W = grid
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    c = torch.stack([t, h, w], -1)  # (T, H, W, 3)
    if layout == "space_major":
        c = c.permute(1, 2, 0, 3)  # (H, W, T, 3)
    return c.reshape(-1, 3)


@lru_cache(maxsize=32)
def local_global_mask(
    grid: tuple[int, int, int], layout: str, num_prefix_tokens: int, kind: str
) -> torch.Tensor:
    """Boolean ``(P+N, P+N)`` mask (True = may attend) of TimeSformer's sparse L+G attention.

    ``kind="local"``: every frame, ``|dh| <= H//4`` and ``|dw| <= W//4`` (the ``T x H/2 x W/2``
    neighbourhood); ``kind="global"``: same parity of t, h and w (stride 2 in every axis). Prefix
    tokens attend to, and are attended by, every token."""
    _, H, W = grid
    c = token_coords(grid, layout)
    d = (c[:, None, :] - c[None, :, :]).abs()  # (N, N, 3)
    if kind == "local":
        patch = (d[..., 1] <= H // 4) & (d[..., 2] <= W // 4)
    elif kind == "global":
        patch = (d % 2 == 0).all(-1)
    else:
        raise ValueError(f"kind must be 'local' or 'global', got {kind!r}")
    n = num_prefix_tokens + c.shape[0]
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[num_prefix_tokens:, num_prefix_tokens:] = patch
    return mask


def axis_sdpa(
    attn: Attention,
    qkv: torch.Tensor,
    dims: tuple[int, ...],
    prefix_qkv: torch.Tensor | None = None,
    mean_prefix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention along some grid dims of a 5D token view; the other grid dims act as batch.

    ``qkv``: ``(B, d1, d2, d3, 3, h, hd)`` (``attn.qkv_packed`` of the patch view, possibly a head
    slice); ``dims``: adjacent grid dims (1..3) to attend over. ``prefix_qkv``: ``(B, P, 3, h, hd)``
    tokens prepended to every group; their outputs are averaged over the groups (``mean_prefix``) or
    returned per group.
    Returns the attention outputs before ``proj``: ``(B, d1, d2, d3, h, hd)`` and ``(B, P, h, hd)``
    (per group: ``(B, *G, P, h, hd)``, ``G`` the grid dims not in ``dims``, in order).
    """
    B, *g, _, nh, hd = qkv.shape
    others = tuple(d for d in (1, 2, 3) if d not in dims)
    G, L = [g[d - 1] for d in others], math.prod(g[d - 1] for d in dims)
    qkv = qkv.permute(4, 0, *others, 5, *dims, 6).reshape(3, B, *G, nh, L, hd)  # (3, B, *G, h, L, hd)
    P = 0
    if prefix_qkv is not None:
        P = prefix_qkv.shape[1]
        pq = prefix_qkv.permute(2, 0, 3, 1, 4)  # (3, B, h, P, hd)
        pq = pq.reshape(3, B, *([1] * len(G)), nh, P, hd).expand(3, B, *G, nh, P, hd)
        qkv = torch.cat([pq, qkv], -2)  # (3, B, *G, h, P+L, hd)
    q, k, v = qkv.reshape(3, -1, nh, P + L, hd).unbind(0)  # the one copy: 3 x (B*G, h, P+L, hd)
    o = attn.sdpa(q, k, v).view(B, *G, nh, P + L, hd)
    po = o[..., :P, :].transpose(-3, -2) if P else None  # (B, *G, P, h, hd)
    if P and mean_prefix:
        po = po.mean(tuple(range(1, 1 + len(G))))  # (B, P, h, hd)
    o = o[..., P:, :].unflatten(-2, [g[d - 1] for d in dims])  # (B, *G, h, *Ldims, hd)
    pos = {d: 1 + i for i, d in enumerate(others)} | {d: 2 + len(G) + i for i, d in enumerate(dims)}
    o = o.permute(0, pos[1], pos[2], pos[3], 1 + len(G), o.ndim - 1)  # (B, d1, d2, d3, h, hd)
    return o, po


def _autocast_on(t: torch.Tensor) -> bool:
    kind = t.device.type
    return kind in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(kind)


def add_linear(
    x: torch.Tensor, h: torch.Tensor, linear: nn.Linear, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x + linear(h)`` with the residual folded into the GEMM (``addmm`` accumulates into
    ``x + bias``): one pass over the output fewer. Shapes ``(..., C)``; ``out`` (optional) receives the
    result and may be a strided view, e.g. the patch part of a ``(B, P + N, C)`` buffer. Only without
    autograd and autocast (``out=`` ops are neither differentiable nor autocast); otherwise the plain
    expression."""
    if torch.is_grad_enabled() or _autocast_on(h) or h.dtype != linear.weight.dtype:
        res = x + linear(h)
        return res if out is None else out.copy_(res)
    if isinstance(linear, FastLinear):  # kinetix.deploy.optimize_for_inference: one oneDNN GEMM + sum
        res = linear.add_to(x, h)
        if res is not None:
            return res if out is None else out.copy_(res)
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    torch.add(x, linear.bias, out=out) if linear.bias is not None else out.copy_(x)
    if out.is_contiguous():
        flat = out.view(-1, out.shape[-1])
        torch.addmm(flat, h.reshape(-1, h.shape[-1]), linear.weight.t(), out=flat)
    else:  # a batch of contiguous (N, C) matrices: one strided batched GEMM writes them in place
        o3, B = out.flatten(1, -2), out.shape[0]  # (B, N, C) view
        torch.baddbmm(o3, h.reshape(B, -1, h.shape[-1]), linear.weight.t().expand(B, -1, -1), out=o3)
    return out


class _Affine(NamedTuple):
    """A fixed ``h @ weight.T + bias`` with the :class:`nn.Linear` attributes :func:`add_linear` uses."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight, self.bias)


class SpaceTimeBlock(nn.Module):
    """Pre-norm transformer block with a space-time attention scheme (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: str = "joint",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qv_bias_only: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] | None = None,
        layout: str = "space_major",
        num_prefix_tokens: int = 1,
        order: tuple[str, str] = ("space", "time"),
        num_time_heads: int | None = None,
    ):
        super().__init__()
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"attention must be one of {ATTENTION_TYPES}, got {attention!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.dim, self.attention = dim, attention
        self.layout, self.num_prefix_tokens = layout, num_prefix_tokens
        self._norm = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self._attn = partial(
            Attention, dim, num_heads, qkv_bias=qkv_bias, qv_bias_only=qv_bias_only, attn_drop=attn_drop
        )
        self._drop = drop
        axis = _AXIS_DIM[layout]
        dims = {k: tuple(axis[a] for a in v) for k, v in _STAGE_AXES.items()}

        if attention == "joint":
            self._stages = [self._full_stage("")]
        elif attention == "divided":
            self._stages = [
                self._axis_stage("temporal_", dims["time"], False, True),
                self._axis_stage("", dims["space"]),
            ]
        elif attention == "space":
            self._stages = [self._axis_stage("", dims["space"])]
        elif attention == "local_global":
            self._stages = [self._full_stage("local_", "local", fc=True), self._full_stage("", "global")]
        elif attention == "axial":
            self._stages = [
                self._axis_stage("temporal_", dims["time"], False, True),
                self._axis_stage("width_", dims["width"], False, True),
                self._axis_stage("", dims["height"]),
            ]
        elif attention == "factorised":
            if sorted(order) != ["space", "time"]:
                raise ValueError(f"order must be ('space', 'time') or ('time', 'space'), got {order!r}")
            make = {"space": lambda: self._axis_stage("", dims["space"]),
                    "time": lambda: self._axis_stage("temporal_", dims["time"], False, False)}  # fmt: skip
            self._stages = [make[o]() for o in order]
        else:  # factorised_dot
            if num_prefix_tokens:
                raise ValueError(
                    "factorised_dot attention has no prefix (CLS) tokens; use num_prefix_tokens=0"
                )
            nt = num_heads // 2 if num_time_heads is None else num_time_heads
            if not 0 <= nt <= num_heads:
                raise ValueError(f"num_time_heads must be in [0, {num_heads}], got {nt}")
            self.num_time_heads = nt
            self.norm1, self.attn = self._norm(dim), self._attn(proj_drop=drop)
            self._stages = [partial(self._run_factorised_dot, dims["time"], dims["space"])]

        del self._norm, self._attn, self._drop  # construction helpers only
        self._composed_cache: dict[int, tuple] = {}  # id(*_fc) -> (tensor versions, _Affine)
        self.drop_path = DropPath(drop_path)
        self.norm2 = (norm_layer or partial(nn.LayerNorm, eps=1e-6))(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    # ---- stage construction (__init__ only) -------------------------------------------------------
    def _modules_for(self, prefix: str, fc: bool):
        norm, attn = self._norm(self.dim), self._attn(proj_drop=self._drop)
        setattr(self, f"{prefix}norm1", norm)
        setattr(self, f"{prefix}attn", attn)
        lin = None
        if fc:
            lin = nn.Linear(self.dim, self.dim)
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
            setattr(self, f"{prefix}fc", lin)
        return norm, attn, lin

    def _full_stage(self, prefix: str, mask: str | None = None, fc: bool = False):
        norm, attn, lin = self._modules_for(prefix, fc)
        return partial(self._run_full, norm, attn, lin, mask)

    def _axis_stage(self, prefix: str, dims: tuple[int, ...], with_prefix: bool = True, fc: bool = False):
        norm, attn, lin = self._modules_for(prefix, fc)
        return partial(self._run_axis, norm, attn, lin, dims, with_prefix)

    # ---- stage execution -------------------------------------------------------------------------
    def _keep(self, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """Stochastic-depth scale (0 or ``1/(1-p)``), ``None`` when off. Default: per sample,
        ``(B, 1, ..., 1)`` broadcasting over ``x`` (shared by the prefix and patch tokens of a stage
        over the whole clip); ``shape``: one draw per element of that shape (per attention group)."""
        p = self.drop_path.drop_prob
        if not self.training or p == 0.0:
            return None
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if shape is None else shape
        return x.new_empty(shape).bernoulli_(1.0 - p).div_(1.0 - p)

    @staticmethod
    def _scale(res: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return res if keep is None else res * keep

    def _add_branch(self, x, h, attn, lin, keep, out=None):
        """``x + lin(proj(h))`` (``lin`` optional) with stochastic depth, written to ``out`` if given;
        ``h``: attention output before ``attn.proj``. At inference the residual add is folded into the
        last GEMM, and under ``torch.inference_mode`` ``lin ∘ proj`` runs as one cached GEMM
        (:meth:`_composed`)."""
        if keep is None and not self.training:
            if lin is None:
                return add_linear(x, h, attn.proj, out)
            if torch.is_inference_mode_enabled():
                return add_linear(x, h, self._composed(attn.proj, lin), out)
            return add_linear(x, attn.proj(h), lin, out)
        res = self._scale(attn.proj_drop(attn.proj(h)), keep)
        res = x + (lin(res) if lin is not None else res)
        return res if out is None else out.copy_(res)

    def _composed(self, first: nn.Linear, second: nn.Linear) -> _Affine:
        """``second(first(h))`` as one affine map ``(W2 W1, W2 b1 + b2)``: the divided/axial/L+G
        ``*_fc`` after ``proj`` costs one ``C x C`` GEMM per token less (TimeSformer-B: 11 of 196
        GMACs). Cached per pair, recomputed when either layer's tensors change (version or storage).
        Only under ``inference_mode``, so FLOP counting (``no_grad``) sees the model as published."""
        params = (first.weight, first.bias, second.weight, second.bias)
        key = tuple((p._version, p.data_ptr()) for p in params)
        hit = self._composed_cache.get(id(second))
        if hit is None or hit[0] != key:
            w = second.weight @ first.weight  # (C, C)
            b = torch.addmv(second.bias, second.weight, first.bias)
            hit = key, FastLinear.from_tensors(w, b) if isinstance(second, FastLinear) else _Affine(w, b)
            self._composed_cache[id(second)] = hit
        return hit[1]

    def _run_full(self, norm, attn, lin, mask_kind, x, grid):
        mask = None
        if mask_kind is not None:
            mask = local_global_mask(tuple(grid), self.layout, self.num_prefix_tokens, mask_kind).to(x.device)
        return self._add_branch(x, attn.attend(norm(x), mask), attn, lin, self._keep(x))

    def _run_axis(self, norm, attn, lin, dims, with_prefix, x, grid):
        cls, xp = patch_view(x, grid, self.layout, self.num_prefix_tokens)  # (B, P, C), (B, d1, d2, d3, C)
        pqkv = attn.qkv_packed(norm(cls)) if with_prefix and cls.shape[1] else None
        # stochastic depth per attention group, as the official TimeSformer applies DropPath to the
        # folded batch: per (b, h, w) over time, per (b, t) over space; (B, d1', d2', d3', 1) with the
        # attended dims of size 1
        keep = self._keep(x, (*(1 if d in dims else n for d, n in enumerate(xp.shape[:-1])), 1))
        o, po = axis_sdpa(
            attn, attn.qkv_packed(norm(xp)), dims, pqkv, mean_prefix=keep is None
        )  # (B, d1, d2, d3, h, hd), (B, P, h, hd) or per group (B, *G, P, h, hd)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)  # written in two parts: no cat
        y_p = patch_view(y, grid, self.layout, cls.shape[1])[1]
        self._add_branch(xp, o.flatten(-2), attn, lin, keep, out=y_p)
        y_cls = y[:, : cls.shape[1]]  # (B, P, C), viewed after the first write (autograd: y is no leaf now)
        if po is None:
            y_cls.copy_(cls)
        elif keep is None:
            self._add_branch(cls, po.flatten(-2), attn, lin, None, out=y_cls)  # (B, P, C)
        else:  # each group's prefix residual takes its group's draw, then the groups are averaged
            G = [n for d, n in enumerate(keep.shape[1:-1], 1) if d not in dims]
            res = attn.proj_drop(attn.proj(po.flatten(-2))) * keep.reshape(-1, *G, 1, 1)  # (B, *G, P, C)
            res = res.mean(tuple(range(1, 1 + len(G))))  # (B, P, C)
            y_cls.copy_(cls + (lin(res) if lin is not None else res))
        return y

    def _run_factorised_dot(self, tdims, sdims, x, grid):
        _, xp = patch_view(x, grid, self.layout, 0)
        qkv = self.attn.qkv_packed(self.norm1(xp))  # (B, d1, d2, d3, 3, h, hd)
        nt = self.num_time_heads
        outs = [axis_sdpa(self.attn, qkv[..., :nt, :], tdims)[0]] if nt else []
        outs += [axis_sdpa(self.attn, qkv[..., nt:, :], sdims)[0]] if nt < self.attn.num_heads else []
        o = torch.cat(outs, -2) if len(outs) > 1 else outs[0]  # (B, d1, d2, d3, h, hd)
        return self._add_branch(xp, o.flatten(-2), self.attn, None, self._keep(xp)).flatten(1, 3)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
        """``x``: ``(B, P + T*H*W, C)``; ``grid``: ``(T, H, W)`` token grid (unused by ``"joint"``)."""
        for stage in self._stages:
            x = stage(x, grid)
        if self.training:
            return x + self.drop_path(self.mlp(self.norm2(x)))
        return add_linear(x, self.mlp.hidden(self.norm2(x)), self.mlp.fc2)  # x + mlp(norm2(x))
