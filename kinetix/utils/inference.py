"""Inference-time speed-ups that need nothing but torch: :class:`FastLinear`, :func:`onednn_copy` and
:class:`InferenceModel`, which measures its candidate forwards and keeps the fastest.

Measured on the project's CPU (2 threads, fp32): the torch CPU wheel runs ``nn.Linear`` through MKL
sgemm, which reaches about half of the machine's GEMM rate; the same products through oneDNN with a
prepacked weight (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's freezing pass uses)
run ~2x faster. Video transformers spend most of their time in these GEMMs, CNNs in oneDNN
convolutions already. Candidates:

* ``"eager"`` — the model as it is.
* ``"onednn"`` — a copy of the module tree sharing the parameters, every ``nn.Linear`` replaced by
  :class:`FastLinear` (prepacked oneDNN weight, GELU fused into the first MLP layer), and attention
  over long sequences (VideoMAE's and joint attention's 1568+ tokens) run by :func:`onednn_sdpa`
  (oneDNN GEMMs on row blocks, 1.3-1.7x torch's CPU SDPA kernel, whose GEMMs are MKL's). Exact up
  to float rounding. Inside CPU bf16 autocast the GEMMs run in bf16 with bf16 packed weights (and
  long-sequence attention in fp32, rounded to bf16). Under autograd, on other devices
  and dtypes it runs ``F.linear`` / SDPA as before, so the copy still trains and the original module
  is untouched.
* more (e.g. ``"onnxruntime"``, added by :func:`kinetix.deploy.optimize_for_inference`) as factories.
* ``"auto"`` — times the candidates on the first input of each shape (and autocast dtype),
  interleaved, keeps the fastest whose output matches eager within ``rtol`` of the logit scale
  (under autocast: no further from the fp32 output than eager's own). Nothing is vendor-specific.

The engine's ``test`` / ``predict`` paths use :func:`fast_inference` (``auto`` over eager and oneDNN).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import ConfigError, KinetixError

__all__ = [
    "FastLinear",
    "InferenceModel",
    "fast_inference",
    "onednn_copy",
    "onednn_sdpa",
    "onednn_sdpa_applies",
]

_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# below this many keys torch's fused CPU SDPA (batched over heads in one call) is faster than one
# oneDNN GEMM pair per head (measured: 197 keys x 96 heads 0.73x, 393 keys 1.2x, 1568 keys 1.5x)
_BF16 = _MKLDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()  # bf16 GEMMs (AVX-512 BF16 / AMX)
_SDPA_MIN_KEYS = 384
_SDPA_BLOCK = 1 << 19  # score elements per row block (2 MiB fp32: the block stays in cache)


class FastLinear(nn.Linear):
    """``nn.Linear`` (optionally followed by GELU) whose inference forward is one oneDNN GEMM with a
    prepacked weight and the activation fused. Shares ``weight``/``bias`` with the layer it was made
    from; the packed copy is rebuilt when the weight changes (``weight._version``).

    The GEMM runs in fp32, or in bf16 inside CPU bf16 autocast (a bf16 packed weight; the output is
    bf16, as autocast's ``F.linear`` gives). Under autograd, on other devices and dtypes it is
    ``F.linear``. ``(..., in_features) -> (..., out_features)``."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters (or tensors)
        self.gelu = gelu  # None, "none" (erf) or "tanh": nn.GELU's ``approximate``
        self._packed: dict[torch.dtype, tuple] = {}  # dtype -> (key, packed weight, bias in dtype)

    def compute_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype of the fast GEMM for ``x`` (fp32, or bf16 under CPU bf16 autocast), or ``None``
        where it does not apply (autograd, other devices, dtypes or autocast types)."""
        w = self.weight
        if not (_MKLDNN and x.device.type == "cpu" and w.dtype == torch.float32):
            return None
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            return None
        if torch.is_autocast_enabled("cpu"):
            bf16 = _BF16 and torch.get_autocast_dtype("cpu") == torch.bfloat16
            return torch.bfloat16 if bf16 and x.dtype in (torch.float32, torch.bfloat16) else None
        return torch.float32 if x.dtype == torch.float32 else None

    def packed_weight(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prepacked weight and the bias in ``dtype`` (cached until either changes)."""
        w, b = self.weight, self.bias
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in (w, b) if t is not None)
        cached = self._packed.get(dtype)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype), 1024)
                cached = (key, packed, None if b is None else b.detach().to(dtype))
            self._packed[dtype] = cached
        return cached[1], cached[2]

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> FastLinear:
        """A fixed affine map ``h @ weight.T + bias`` (e.g. two layers composed at inference)."""
        shell = nn.Module()
        shell.in_features, shell.out_features, shell.weight, shell.bias = (
            weight.shape[1],
            weight.shape[0],
            weight,
            bias,
        )
        return cls(shell)

    def with_bias(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` with another bias (VideoMAE's q/v-only bias), on the fast path."""
        dt = self.compute_dtype(x)
        if self.gelu is not None or dt is None or (bias.requires_grad and torch.is_grad_enabled()):
            return F.linear(x, self.weight, bias)
        return torch.ops.mkldnn._linear_pointwise(
            x.to(dt), self.packed_weight(dt)[0], bias.to(dt), "none", [], ""
        )

    def add_to(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        """``x + self(h)`` as one fp32 oneDNN GEMM with a fused sum post-op, or ``None`` where that
        does not apply (autograd, autocast, fused GELU, other dtypes/devices)."""
        if self.gelu is not None or self.compute_dtype(h) != torch.float32 or x.dtype != h.dtype:
            return None
        w, b = self.packed_weight()
        return torch.ops.mkldnn._linear_pointwise.binary(h, x.contiguous(), w, b, "add")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype(x)
        if dt is None:
            y = F.linear(x, self.weight, self.bias)
            return y if self.gelu is None else F.gelu(y, approximate=self.gelu)
        w, b = self.packed_weight(dt)
        attr, algorithm = ("none", "") if self.gelu is None else ("gelu", self.gelu)
        return torch.ops.mkldnn._linear_pointwise(x.to(dt), w, b, attr, [], algorithm)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", gelu={self.gelu!r}" if self.gelu is not None else "")


def onednn_sdpa_applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`onednn_sdpa` runs ``(B, heads, L, hd)`` attention faster than torch's SDPA:
    fp32 or bf16 CPU inference (no autograd) over at least ``_SDPA_MIN_KEYS`` keys."""
    dtypes = (torch.float32, torch.bfloat16) if _BF16 else (torch.float32,)
    return (
        _MKLDNN
        and q.dim() == k.dim() == 4
        and q.device.type == "cpu"
        and q.dtype == k.dtype
        and q.dtype in dtypes
        and k.shape[-2] >= _SDPA_MIN_KEYS
        and not (torch.is_grad_enabled() and q.requires_grad)
    )


def onednn_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` without a mask, as ``F.scaled_dot_product_attention``: ``q``
    ``(B, heads, L, hd)``, ``k``/``v`` ``(B, heads, S, hd)`` -> ``(B, heads, L, hd)``, stored as
    ``(B, L, heads, hd)`` (so merging the heads afterwards is a free view, as after SDPA).

    Per (batch, head): ``k`` and ``v^T`` made contiguous once, then for row blocks of ``q`` small
    enough for the scores to stay in cache: one oneDNN GEMM for the scores, an in-place softmax, one
    oneDNN GEMM into the output. Vaswani et al. 2017, eq. 1; the blocking only changes which rows are
    computed together (every row's softmax sees all ``S`` keys), so it is exact up to rounding.
    bf16 inputs (a bf16 linear's output under autocast) are computed in fp32 and the output rounded
    to bf16: closer to fp32 than torch's fused bf16 kernel, and still faster than it here (its
    CPU kernel runs bf16 no faster than fp32)."""
    B, H, L, D = q.shape
    block = max(64, _SDPA_BLOCK // k.shape[-2])
    out = q.new_empty(B, L, H, D)  # in q's dtype: the rows are rounded as they are stored
    lin = torch.ops.mkldnn._linear_pointwise
    for b in range(B):
        for h in range(H):
            kh, vt = k[b, h].float() * scale, v[b, h].t().float().contiguous()  # (S, hd), (hd, S) fp32
            qh = q[b, h].float()  # (L, hd): a view for fp32 q
            for i in range(0, L, block):
                s = lin(qh[i : i + block], kh, None, "none", [], "")  # (rows, S)
                torch.softmax(s, -1, out=s)
                out[b, i : i + block, h] = lin(s, vt, None, "none", [], "")
    return out.transpose(1, 2)


def _share_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def onednn_copy(model: nn.Module) -> nn.Module:
    """``model``'s module tree with every ``nn.Linear`` a :class:`FastLinear` (parameters shared);
    a Linear named ``fc1`` with an ``nn.GELU`` sibling named ``act`` (the transformer MLP) gets the
    activation fused and the ``act`` slot becomes ``nn.Identity``; modules with an ``onednn`` switch
    turn it on (:class:`kinetix.layers.attention.Attention`: :func:`onednn_sdpa`; the patch
    embeddings: their projection as a :class:`FastLinear`).

    The copied Linear objects become FastLinears in place (their class is switched, nothing else
    changes), so references a module keeps to its layers (e.g. lists resolved in ``__init__``) see
    them too; the original model is not touched."""
    out = _share_copy(model)
    for parent in list(out.modules()):
        if hasattr(parent, "onednn"):
            parent.onednn = _MKLDNN
        children = dict(parent.named_children())
        for name, child in children.items():
            if type(child) is not nn.Linear:
                continue
            act = children.get("act")
            gelu = act.approximate if name == "fc1" and isinstance(act, nn.GELU) and _MKLDNN else None
            if gelu is not None:
                parent.act = nn.Identity()
            child.__class__ = FastLinear
            child.gelu, child._packed = gelu, {}
    return out


Factory = Callable[[nn.Module, torch.Tensor], nn.Module]  # (model, example batch) -> forward module


class InferenceModel(nn.Module):
    """``model`` with a faster inference forward.

    ``backend``: ``"auto"`` or one candidate name: ``"eager"``, ``"onednn"`` or a key of ``factories``
    (extra candidates built on first use from the model and an example batch; with ``auto`` they
    take part in the timing too). :attr:`chosen` maps each input signature seen so far to the
    backend that runs it, :attr:`timings` to the median seconds per candidate. With autograd enabled
    or in train mode it calls the original model, so it never changes training; attribute access
    falls through to the model (``pretrained_cfg``, ``num_classes``, ...)."""

    def __init__(
        self,
        model: nn.Module,
        backend: str = "auto",
        *,
        factories: dict[str, Factory] | None = None,
        rtol: float = 1e-4,
        rounds: int = 3,
    ):
        super().__init__()
        self.factories: dict[str, Factory] = {"onednn": lambda m, x: onednn_copy(m), **(factories or {})}
        names = ("auto", "eager", *self.factories)
        if backend not in names:
            raise ConfigError(f"inference backend must be one of {', '.join(names)}; got {backend!r}")
        self.model = model
        self.backend, self.rtol, self.rounds = backend, rtol, rounds
        self.built: dict[tuple, nn.Module] = {}
        self.chosen: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}
        self.skipped: dict[str, str] = {}  # candidate -> why it could not be built

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def candidate(self, name: str, x: torch.Tensor) -> nn.Module:
        """The forward module of backend ``name`` (built once; per clip shape for non-oneDNN factories,
        which may specialise on it, e.g. an exported graph)."""
        if name == "eager":
            return self.model
        key = (name,) if name == "onednn" else (name, tuple(x.shape[1:]), x.dtype)
        if key not in self.built:
            self.built[key] = self.factories[name](self.model, x)
        return self.built[key]

    def _choose(self, x: torch.Tensor) -> str:
        if self.backend != "auto":
            return self.backend
        mods = {}
        for n in ("eager", *self.factories):
            try:
                mods[n] = self.candidate(n, x)
            except KinetixError as e:  # e.g. a graph that cannot be exported: not a candidate
                self.skipped[n] = str(e)
        ref, tol = self.model(x), self.rtol
        if _signature(x)[2] is not None:  # autocast: accept what is no further from fp32 than eager is
            with torch.autocast(x.device.type, enabled=False):
                exact = self.model(x.float())
            tol, ref = max(tol, 2 * _distance(ref, exact)), exact
        times: dict[str, list[float]] = {}
        for n, m in mods.items():
            out = m(x)  # also the warm-up run
            if n == "eager" or _distance(out, ref) <= tol:
                times[n] = []
        for _ in range(self.rounds):  # interleaved rounds: load changes hit every candidate alike
            for n in times:
                t0 = time.perf_counter()
                mods[n](x)
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) for n, v in times.items()}
        self.timings[_signature(x)] = med
        return min(med, key=med.get)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.model.training or not torch.is_tensor(x):
            return self.model(x)  # training / autograd: the original module, untouched
        sig = _signature(x)
        if sig not in self.chosen:
            self.chosen[sig] = self._choose(x)
        return self.candidate(self.chosen[sig], x)(x)

    def used(self) -> list[str]:
        """The backends that have run so far (one per input signature seen)."""
        return sorted(set(self.chosen.values()))

    def train(self, mode: bool = True):
        self.training = mode
        self.model.train(mode)
        for m in self.built.values():
            m.train(mode)
        return self


def _signature(x: torch.Tensor) -> tuple:
    """Clip shape, dtype and the autocast dtype in force (``None``: no autocast)."""
    amp = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
    return (tuple(x.shape), x.dtype, amp)


def _leaves(out) -> list:
    """The values of an output in order: a tensor, or lists / tuples / dicts / dataclasses of them
    (e.g. a detector's per-clip :class:`~kinetix.detection.evad.DetectionOutput` list)."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    elif isinstance(out, dict):
        out = [*out.keys(), *out.values()]
    if isinstance(out, list | tuple):
        return [leaf for o in out for leaf in _leaves(o)]
    return [out]


def _distance(out, ref) -> float:
    """How far ``out`` is from ``ref``: the largest ``max |out - ref|`` of their floating-point
    tensors, each relative to its own scale (``max |ref|``); ``inf`` where the structure, a shape
    or any other value (integer labels, counts) differs."""
    a, b = _leaves(out), _leaves(ref)
    if len(a) != len(b):
        return float("inf")
    d = 0.0
    for x, y in zip(a, b):
        if not (torch.is_tensor(x) and torch.is_tensor(y)):
            if torch.is_tensor(x) or torch.is_tensor(y) or x != y:
                return float("inf")
        elif x.shape != y.shape or x.is_floating_point() != y.is_floating_point():
            return float("inf")
        elif not x.is_floating_point():
            if not torch.equal(x, y):
                return float("inf")
        elif x.numel():
            d = max(d, float((x.float() - y.float()).abs().max()) / max(float(y.float().abs().max()), 1e-6))
    return d


def fast_inference(
    model: nn.Module, backend: str = "auto", example: torch.Tensor | None = None
) -> InferenceModel:
    """``model`` in eval mode behind an :class:`InferenceModel` (``auto``: eager vs oneDNN, measured);
    ``example`` makes ``auto`` choose now instead of on the first call."""
    out = InferenceModel(model, backend).eval()
    if example is not None:
        with torch.no_grad():
            out(example)
    return out
