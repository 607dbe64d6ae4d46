"""Temporal layers for 2D CNNs that fold time into the batch.

Every layer takes ``(channels, num_frames, ...)`` and maps ``(B*T, C, H, W) -> (B*T, C, H, W)``,
so a 2D backbone gets temporal modelling by putting one in a block's slot (docs/architecture.md, "Temporal layers").

- :class:`TemporalShift` — TSM (Lin et al., "TSM: Temporal Shift Module for Efficient Video
  Understanding", ICCV 2019). Official channel order: the first ``C//fold_div`` channels of frame t
  come from frame t+1, the next ``C//fold_div`` from frame t-1, zero padding at clip ends. The
  ``causal`` (online) variant moves only the first ``C//fold_div`` channels, from frame t-1, and can
  run frame by frame with a one-frame cache (:meth:`TemporalShift.step`).
- :class:`GateShift` — GSM (Sudhakaran et al., "Gate-Shift Networks for Video Action Recognition",
  CVPR 2020): grouped 3x3x3 gate conv (zero-init) -> tanh, gated halves shifted to t-1 / t+1,
  residual sum ``(1-g)x + shift(g x)``, then the official channel interleave.
- :func:`inter_frame_attention` / :class:`InterFrameAttention` — SIFA (Long et al., "Stand-Alone
  Inter-Frame Attention in Video Models", CVPR 2022), pure PyTorch with ``grid_sample``: frame t
  (query at integer positions) attends to a KxK deformable neighbourhood of frame t+1 (keys = values),
  weights = channel-mean dot products (no softmax), offsets predicted from frame t+1's motion
  saliency; the last frame receives nothing. These work on ``(N, C, T, H, W)``.
- :class:`NonLocal3D` — embedded-Gaussian non-local block (Wang et al., "Non-local Neural
  Networks", CVPR 2018) over all ``T*H*W`` positions of a clip, as TSM's ``ops/non_local.py``
  (keys/values max-pooled 2x2, zero-initialised output BN: identity at initialisation).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "GateShift",
    "InterFrameAttention",
    "NonLocal3D",
    "TemporalShift",
    "inter_frame_attention",
    "motion_saliency",
    "temporal_shift",
]


# ----------------------------------------------------------------------------------------------
# TSM
# ----------------------------------------------------------------------------------------------


def _shift_into(dst: torch.Tensor, src: torch.Tensor, fold: int, first: int, second: int) -> None:
    """Write channel groups ``[0, fold)`` / ``[fold, 2*fold)`` of ``src`` ``(B, T, C', H, W)`` moved by
    ``first`` / ``second`` frames into ``dst`` (+1: frame t reads t+1, -1: reads t-1, 0: unchanged),
    zero-padding the frame that has no source. Channels from ``2*fold`` on are not touched."""
    lo = 0
    for d, hi in ((first, fold), (second, 2 * fold)):
        if d > 0:  # t <- t+1
            dst[:, :-1, lo:hi] = src[:, 1:, lo:hi]
            dst[:, -1, lo:hi] = 0
        elif d < 0:  # t <- t-1
            dst[:, 1:, lo:hi] = src[:, :-1, lo:hi]
            dst[:, 0, lo:hi] = 0
        else:
            dst[:, :, lo:hi] = src[:, :, lo:hi]
        lo = hi


def _shift(x: torch.Tensor, num_frames: int, fold: int, first: int, second: int) -> torch.Tensor:
    """Out-of-place shift of ``x`` ``(B*T, C, H, W)``: ``empty`` + slice copies + boundary zeros (each
    output element written once; no roll, no zero-filled full tensor); keeps the memory format."""
    nt, c, h, w = x.shape
    xv = x.view(nt // num_frames, num_frames, c, h, w)  # (B, T, C, H, W)
    out = torch.empty_like(x)
    ov = out.view(nt // num_frames, num_frames, c, h, w)
    _shift_into(ov, xv, fold, first, second)
    ov[:, :, 2 * fold :] = xv[:, :, 2 * fold :]
    return out


class _ShiftFn(torch.autograd.Function):
    """Shift with its exact adjoint as backward (the opposite shift), one pass each way."""

    @staticmethod
    def forward(ctx, x, num_frames, fold, first, second):
        ctx.args = (num_frames, fold, first, second)
        return _shift(x, num_frames, fold, first, second)

    @staticmethod
    def backward(ctx, grad):
        num_frames, fold, first, second = ctx.args
        return (
            _shift(grad.contiguous(memory_format=_format(grad)), num_frames, fold, -first, -second),
            None,
            None,
            None,
            None,
        )


def _format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def temporal_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8, causal: bool = False) -> torch.Tensor:
    """TSM shift of ``x`` ``(B*T, C, H, W)``; ``causal`` moves only the first fold, from t-1."""
    fold = x.shape[1] // fold_div
    first, second = (-1, 0) if causal else (1, -1)
    return _ShiftFn.apply(x, num_frames, fold, first, second)


def _slide(frames: tuple[torch.Tensor, ...], d: int, fill: torch.Tensor | None = None) -> torch.Tensor | None:
    """In place, frame ``t`` of one fold takes frame ``t + d`` (``d = ±1``), in the order that reads
    every source before it is overwritten; the frame with no source gets ``fill`` (zeros if
    ``None``, and then a copy of the frame pushed out is returned). ``frames``: ``T`` views
    ``(B, fold, H, W)``.

    A loop of ``T - 1`` whole-fold copies (not per pixel): one overlapping copy is refused by torch
    (partial overlap), and staging through a buffer would bring back the traffic this avoids."""
    order = range(len(frames) - 1) if d > 0 else range(len(frames) - 1, 0, -1)
    pushed = frames[0 if d > 0 else -1].clone() if fill is None else None
    for t in order:
        frames[t].copy_(frames[t + d])
    end = frames[-1 if d > 0 else 0]
    end.zero_() if fill is None else end.copy_(fill)
    return pushed


class TemporalShift(nn.Module):
    """Zero-parameter temporal shift (TSM). ``(B*T, C, H, W) -> (B*T, C, H, W)``.

    Args:
        channels: input channels (``fold = channels // fold_div`` channels move each way).
        num_frames: frames T per clip folded into the batch.
        fold_div: 8 in the paper (1/8 from the future, 1/8 from the past).
        causal: online TSM — only the first fold moves, from frame t-1; nothing from the future.

    A causal shift can run one frame at a time: :meth:`step` takes ``(B, C, H, W)`` and a cache
    of the previous frame's first fold; when ``streaming`` is set, ``forward`` calls ``step``
    with the layer's own cache (used by :class:`~kinetix.models.recognizer2d.StreamingRecognizer`).
    """

    def __init__(self, channels: int, num_frames: int, fold_div: int = 8, causal: bool = False):
        super().__init__()
        self.channels, self.num_frames, self.fold_div, self.causal = channels, num_frames, fold_div, causal
        self.fold = channels // fold_div
        self.first, self.second = (-1, 0) if causal else (1, -1)
        self.streaming = False
        self.cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streaming:
            out, self.cache = self.step(x, self.cache)
            return out
        return _ShiftFn.apply(x, self.num_frames, self.fold, self.first, self.second)

    def step(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame ``x`` ``(B, C, H, W)`` -> (shifted frame, new cache ``(B, fold, H, W)``).

        ``cache`` is the previous frame's first fold (``None`` = first frame: zeros)."""
        if not self.causal:
            raise RuntimeError("only a causal TemporalShift can run frame by frame")
        out = x.clone()
        out[:, : self.fold] = 0 if cache is None else cache
        return out, x[:, : self.fold].clone()

    def apply_to(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn(self(x))`` for the residual placement (``x`` itself stays unshifted for the identity).

        Without autograd the shift is done in place in ``x`` and undone after ``fn``: each moved fold
        slides by one frame (a per-frame ``memmove`` along time, only the one frame pushed out is
        saved), so the shift and the undo each read and write ``2*fold`` channels once — a third of
        the traffic of save + shift + restore, and no full-tensor copy. With autograd (training) the
        out-of-place shift is used (in-place writes would invalidate tensors saved for backward)."""
        if torch.is_grad_enabled():
            return fn(self(x))
        f = self.fold
        if self.streaming:  # one frame: the first fold comes from the cache of the previous frame
            new = x[:, :f].clone()
            x[:, :f] = 0 if self.cache is None else self.cache
            try:
                return fn(x)
            finally:
                x[:, :f] = new
                self.cache = new
        nt, c, h, w = x.shape
        xv = x.view(nt // self.num_frames, self.num_frames, c, h, w)  # (B, T, C, H, W)
        folds = [
            (xv[:, :, i * f : (i + 1) * f].unbind(1), d) for i, d in enumerate((self.first, self.second)) if d
        ]
        pushed_out = [_slide(frames, d) for frames, d in folds]
        try:
            return fn(x)
        finally:
            for (frames, d), saved in zip(folds, pushed_out):
                _slide(frames, -d, saved)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, num_frames={self.num_frames}, fold_div={self.fold_div}, causal={self.causal}"
        )


# ----------------------------------------------------------------------------------------------
# GSM
# ----------------------------------------------------------------------------------------------


class GateShift(nn.Module):
    """Gate-Shift Module (official semantics). ``(B*T, C, H, W) -> (B*T, C, H, W)``, ``C % 4 == 0``.

    ``g = tanh(conv3D(relu(bn(x))))`` with ``conv3D`` a grouped ``Conv3d(C, 2, 3, groups=2)``
    (zero-init) giving one gate map per channel half; ``y = g * x``; half 1 reads ``y`` from
    frame t+1, half 2 from t-1 (zero padding); output ``x - y + shift(y)``, then the official
    channel interleave inside each half (output channel 2j <- j, 2j+1 <- C/4+j). Parameter names
    match the official ``gsmModule``.

    ``causal`` (online variant, not in the paper): the gate conv reads frames t-2, t-1, t and both
    halves read ``y`` from t-1, so the layer can run frame by frame (:meth:`step`).
    """

    def __init__(self, channels: int, num_frames: int, causal: bool = False):
        super().__init__()
        if channels % 4:
            raise ValueError(f"GateShift needs channels divisible by 4, got {channels}")
        self.channels, self.num_frames, self.causal = channels, num_frames, causal
        self.conv3D = nn.Conv3d(channels, 2, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm3d(channels)
        nn.init.zeros_(self.conv3D.weight)
        nn.init.zeros_(self.conv3D.bias)
        self.streaming = False
        self.cache: tuple | None = None

    def _taps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame outputs of the 3 temporal taps of ``conv3D(relu(bn(x)))``: ``(B*T, 2, 3, H, W)``.

        BatchNorm3d over (B, C, T, H, W) has the same per-channel statistics as over (B*T, C, H, W),
        and the grouped 3x3x3 conv with 2 outputs is computed as one batched matmul contracting the
        channels for all 27 taps, ``(2, 27, C/2) @ (B*T, 2, C/2, H*W)``, followed by 9 shifted adds
        of small 6-channel maps (spatial taps; the 3 temporal taps are combined by the caller).
        This avoids a permuted copy of the feature map and oneDNN's slow path for convolutions
        with very few output channels (~10x faster on CPU).
        """
        z = F.relu(self.bn(x.unsqueeze(2)).squeeze(2), inplace=True)  # BatchNorm3d on (B*T, C, 1, H, W)
        n, c, h, w = z.shape
        wm = self.conv3D.weight.permute(0, 2, 3, 4, 1).reshape(2, 27, c // 2)  # (group, kt*kh*kw, C/2)
        u = torch.matmul(wm, z.reshape(n, 2, c // 2, h * w))  # (B*T, group, 27, H*W)
        u = F.pad(u.view(n, 6, 9, h, w), (1, 1, 1, 1))  # (B*T, group*kt, kh*kw, H+2, W+2)
        taps = u[:, :, 0, :h, :w].clone()
        for k in range(1, 9):  # spatial taps: out(p) = sum_k u_k(p + k - 1)
            kh, kw = divmod(k, 3)
            taps += u[:, :, k, kh : kh + h, kw : kw + w]
        return taps.view(n, 2, 3, h, w)  # (B*T, group, kt, H, W)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Gate maps ``(B*T, 2, H, W)`` in (-1, 1)."""
        taps = self._taps(x)
        nt, _, _, h, w = taps.shape
        tv = taps.view(nt // self.num_frames, self.num_frames, 2, 3, h, w)  # (B, T, group, kt, H, W)
        if self.causal:  # tap kt reads frame t + kt - 2
            g = tv[:, :, :, 2].clone()
            g[:, 1:] += tv[:, :-1, :, 1]
            g[:, 2:] += tv[:, :-2, :, 0]
        else:  # tap kt reads frame t + kt - 1
            g = tv[:, :, :, 1].clone()
            g[:, 1:] += tv[:, :-1, :, 0]
            g[:, :-1] += tv[:, 1:, :, 2]
        return torch.tanh(g + self.conv3D.bias.view(1, 1, 2, 1, 1)).view(nt, 2, h, w)

    @staticmethod
    def _interleave(out: torch.Tensor) -> torch.Tensor:
        # (N, half, src=2, C/4, H, W) -> (N, half, C/4, src=2, H, W) -> (N, C, H, W)
        n, _, _, c4, h, w = out.shape
        return out.transpose(2, 3).reshape(n, 4 * c4, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streaming:
            out, self.cache = self.step(x, self.cache)
            return out
        nt, c, h, w = x.shape
        b, t = nt // self.num_frames, self.num_frames
        g = self.gate(x).view(b, t, 2, 1, h, w)  # one gate map per half
        xv = x.view(b, t, 2, c // 2, h, w)  # (B, T, half, C/2, H, W)
        out = xv * (1 - g)  # (1 - g) x; the gated part g x is added shifted, without materialising it
        if self.causal:
            out[:, 1:].addcmul_(g[:, :-1], xv[:, :-1])  # both halves read t-1
        else:
            out[:, :-1, 0].addcmul_(g[:, 1:, 0], xv[:, 1:, 0])  # half 1: t <- t+1
            out[:, 1:, 1].addcmul_(g[:, :-1, 1], xv[:, :-1, 1])  # half 2: t <- t-1
        return self._interleave(out.view(nt, 2, 2, c // 4, h, w))

    def step(self, x: torch.Tensor, cache: tuple | None) -> tuple[torch.Tensor, tuple]:
        """One frame ``(B, C, H, W)`` of the causal module; ``cache`` = (taps of t-1, taps of t-2,
        gated features of t-1) or ``None`` for the first frame."""
        if not self.causal:
            raise RuntimeError("only a causal GateShift can run frame by frame")
        b, c, h, w = x.shape
        taps = self._taps(x)  # (B, 2, 3, H, W)
        g = taps[:, :, 2] + self.conv3D.bias.view(1, 2, 1, 1)
        if cache is not None:
            g = g + cache[0][:, :, 1] + (cache[1][:, :, 0] if cache[1] is not None else 0)
        xv = x.view(b, 2, c // 2, h, w)
        y = torch.tanh(g).unsqueeze(2) * xv  # (B, half, C/2, H, W)
        out = xv - y
        if cache is not None:
            out = out + cache[2]
        return self._interleave(out.view(b, 2, 2, c // 4, h, w)), (taps, cache[0] if cache else None, y)

    def extra_repr(self) -> str:
        return f"{self.channels}, num_frames={self.num_frames}, causal={self.causal}"


# ----------------------------------------------------------------------------------------------
# SIFA
# ----------------------------------------------------------------------------------------------


def motion_saliency(f: torch.Tensor) -> torch.Tensor:
    """``sigmoid(f_t - f_{t-1}) * f_t + f_t`` on ``(N, C, T, H, W)`` (``f_{-1} := f_0``)."""
    prev = torch.cat([f[:, :, :1], f[:, :, :-1]], 2)  # (N, C, T, H, W)
    return torch.sigmoid(f - prev) * f + f


def _sampling_grid(offset: torch.Tensor, kernel_size: int, dilation: int, h: int, w: int) -> torch.Tensor:
    """Normalised ``grid_sample`` coordinates ``(N*T, K*K*H, W, 2)`` of the deformed KxK taps.

    ``offset`` ``(N, 2K², T, H, W)``: channel ``2k`` = dy, ``2k+1`` = dx of tap ``k = kh*K + kw``
    (DCN layout). ``align_corners=True``: pixel ``p`` maps to ``2p/(size-1) - 1``.
    """
    n, _, t = offset.shape[:3]
    k2 = kernel_size * kernel_size
    pad = (dilation * (kernel_size - 1) + 1) // 2
    taps = torch.arange(kernel_size, device=offset.device, dtype=offset.dtype) * dilation - pad
    ky = taps.view(kernel_size, 1).expand(kernel_size, kernel_size).reshape(1, k2, 1, 1, 1)
    kx = taps.view(1, kernel_size).expand(kernel_size, kernel_size).reshape(1, k2, 1, 1, 1)
    hh = torch.arange(h, device=offset.device, dtype=offset.dtype).view(1, 1, 1, h, 1)
    ww = torch.arange(w, device=offset.device, dtype=offset.dtype).view(1, 1, 1, 1, w)
    y = hh + ky + offset[:, 0::2]  # (N, K², T, H, W)
    x = ww + kx + offset[:, 1::2]
    grid = torch.stack([x * (2 / max(w - 1, 1)) - 1, y * (2 / max(h - 1, 1)) - 1], -1)  # (N,K²,T,H,W,2)
    return grid.transpose(1, 2).reshape(n * t, k2 * h, w, 2)


def inter_frame_attention(
    f: torch.Tensor, offset: torch.Tensor, kernel_size: int = 3, dilation: int = 1, last_frame: str = "none"
) -> torch.Tensor:
    """SIFA deformable inter-frame aggregation (released-code semantics), pure PyTorch.

    Args:
        f: features ``(N, C, T, H, W)`` (query = key = value, no projections).
        offset: ``(N, 2K², T, H, W)``; ``offset[:, :, t]`` deforms the taps sampled from frame t.
        last_frame: ``"none"`` (released: the last frame gets zeros) or ``"self"`` (the paper: the
            last frame attends to its own deformed neighbourhood, with its own offsets).
    Returns:
        ``(N, C, T, H, W)``: frame t gets ``sum_k w_k * f_{t+1}(p + p_k + Δp_k)`` with
        ``w_k = mean_c f_t(p) * f_{t+1}(p + p_k + Δp_k)``. (The released block adds this to ``f``.)
    """
    if last_frame not in ("none", "self"):
        raise ValueError(f"last_frame must be 'none' or 'self', got {last_frame!r}")
    n, c, t, h, w = f.shape
    k2 = kernel_size * kernel_size
    if t == 1 and last_frame == "none":  # no next frame to attend to (e.g. a 1-frame dual branch)
        return torch.zeros_like(f)  # what the general path gives, without a zero-size reshape
    if last_frame == "self":  # keys: frames 1..T-1 then T-1 again; queries: every frame
        keys, queries = torch.cat([f[:, :, 1:], f[:, :, -1:]], 2), f
        offset = torch.cat([offset[:, :, 1:], offset[:, :, -1:]], 2)
    else:  # keys: frames 1..T-1; queries: frames 0..T-2
        keys, queries, offset = f[:, :, 1:], f[:, :, :-1], offset[:, :, 1:]
    tk = keys.shape[2]
    grid = _sampling_grid(offset, kernel_size, dilation, h, w)
    src = keys.transpose(1, 2).reshape(n * tk, c, h, w)  # (N*Tk, C, H, W)
    v = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    v = v.view(n, tk, c, k2, h, w)  # sampled keys/values of frame t+1
    q = queries.transpose(1, 2).unsqueeze(3)  # (N, Tk, C, 1, H, W)
    weight = (q * v).mean(2, keepdim=True)  # (N, Tk, 1, K², H, W): 1/C dot product, no softmax
    agg = (weight * v).sum(3).transpose(1, 2)  # (N, C, Tk, H, W)
    return agg if tk == t else F.pad(agg, (0, 0, 0, 0, 0, 1))  # released: the last frame gets nothing


class InterFrameAttention(nn.Module):
    """SIFA block body: ``f + inter_frame_attention(f, conv_offset(motion_saliency(f)))``.

    ``(B*T, C, H, W) -> (B*T, C, H, W)``. ``conv_offset`` is the released ``Conv3d(C, 2K², (1,3,3))``
    without bias, zero-initialised (so the taps start on the regular KxK grid); as it has no
    temporal extent it is a per-frame ``Conv2d`` here (the converter reshapes 5-D weights).
    """

    def __init__(self, channels: int, num_frames: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        self.channels, self.num_frames = channels, num_frames
        self.kernel_size, self.dilation = kernel_size, dilation
        self.conv_offset = nn.Conv2d(channels, 2 * kernel_size * kernel_size, 3, padding=1, bias=False)
        nn.init.zeros_(self.conv_offset.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        f = x.view(nt // self.num_frames, self.num_frames, c, h, w).transpose(1, 2)  # (N, C, T, H, W)
        sal = motion_saliency(f).transpose(1, 2).reshape(nt, c, h, w)
        offset = self.conv_offset(sal)  # (N*T, 2K², H, W)
        offset = offset.view(nt // self.num_frames, self.num_frames, -1, h, w).transpose(1, 2)
        agg = inter_frame_attention(f, offset, self.kernel_size, self.dilation)  # (N, C, T, H, W)
        return x + agg.transpose(1, 2).reshape(nt, c, h, w)

    def extra_repr(self) -> str:
        return f"{self.channels}, num_frames={self.num_frames}, kernel_size={self.kernel_size}, dilation={self.dilation}"


# ----------------------------------------------------------------------------------------------
# Non-local
# ----------------------------------------------------------------------------------------------


class NonLocal3D(nn.Module):
    """Embedded-Gaussian non-local block over a clip. ``(B*T, C, H, W) -> (B*T, C, H, W)``.

    ``z = x + BN(W(y))``, ``y = softmax(theta(x)^T phi(x)) g(x)`` over all ``T*H*W`` positions, with
    ``theta``, ``phi``, ``g`` 1x1x1 convs ``C -> C/2`` (bias), ``phi`` and ``g`` followed by a
    ``(1, 2, 2)`` max pool (``sub_sample``), no ``1/sqrt(d)`` scaling (the official embedded Gaussian),
    ``W`` a 1x1x1 conv ``C/2 -> C`` and a BatchNorm3d whose weight and bias start at zero — so the
    block is the identity at initialisation. Parameter names follow TSM's ``NONLocalBlock3D``
    (``theta``, ``phi``, ``g``, ``W.0``, ``W.1``; the official ``phi.0``/``g.0`` are the convs of
    ``Sequential(conv, pool)``, which the converter maps).

    The three projections run as one 1x1 conv (pooling ``phi``/``g`` after it, as the official code
    does); the attention is ``F.scaled_dot_product_attention`` with ``scale=1`` (one head of width
    C/2). It does not reuse :class:`~kinetix.layers.attention.Attention` because that module's
    fused ``qkv`` Linear maps ``dim -> 3*dim`` on one token sequence, while here keys/values are
    pooled after the projection (a different, shorter sequence than the queries) and the inner
    width is C/2 — the attention kernel itself is the same SDPA call.

    Not causal: every frame attends to the whole clip, so a model with non-local blocks cannot run
    online frame by frame.
    """

    def __init__(
        self, channels: int, num_frames: int, inter_channels: int | None = None, sub_sample: bool = True
    ):
        super().__init__()
        self.channels, self.num_frames, self.sub_sample = channels, num_frames, sub_sample
        self.inter_channels = ci = inter_channels or max(channels // 2, 1)
        self.g = nn.Conv3d(channels, ci, 1)
        self.theta = nn.Conv3d(channels, ci, 1)
        self.phi = nn.Conv3d(channels, ci, 1)
        self.W = nn.Sequential(nn.Conv3d(ci, channels, 1), nn.BatchNorm3d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, _, h, w = x.shape
        t, ci = self.num_frames, self.inter_channels
        b = nt // t
        weight = torch.cat([self.theta.weight, self.phi.weight, self.g.weight]).flatten(1)  # (3*ci, C)
        bias = torch.cat([self.theta.bias, self.phi.bias, self.g.bias])
        qkv = F.conv2d(x, weight[:, :, None, None], bias)  # (B*T, 3*ci, H, W)
        kv = qkv[:, ci:]
        if self.sub_sample:
            kv = F.max_pool2d(kv, 2)  # MaxPool3d((1, 2, 2)): per frame
        hk, wk = kv.shape[-2:]
        q = qkv[:, :ci].reshape(b, t, ci, h * w).transpose(2, 3).reshape(b, 1, t * h * w, ci)
        kv = kv.reshape(b, t, 2, ci, hk * wk).permute(2, 0, 1, 4, 3).reshape(2, b, 1, t * hk * wk, ci)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=1.0)  # (B, 1, T*H*W, ci)
        y = y.view(b, t, h, w, ci).permute(0, 1, 4, 2, 3).reshape(nt, ci, h, w)
        wy = F.conv2d(y, self.W[0].weight.flatten(1)[:, :, None, None], self.W[0].bias)  # (B*T, C, H, W)
        return x + self.W[1](wy.unsqueeze(2)).squeeze(2)  # BatchNorm3d on (B*T, C, 1, H, W)

    def extra_repr(self) -> str:
        return f"{self.channels}, num_frames={self.num_frames}, inter_channels={self.inter_channels}, sub_sample={self.sub_sample}"
