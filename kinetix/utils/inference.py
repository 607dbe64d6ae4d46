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
  to float rounding; under autograd, autocast, on other devices/dtypes it runs ``F.linear`` /
  SDPA as before, so the copy still trains and the original module is untouched.
* more (e.g. ``"onnxruntime"``, added by :func:`kinetix.deploy.optimize_for_inference`) as factories.
* ``"auto"`` — times the candidates on the first input of each shape, interleaved, keeps the fastest
  whose output matches eager within ``rtol``. Nothing is vendor-specific.

The engine's ``test`` / ``predict`` paths use :func:`fast_inference` (``auto`` over eager and oneDNN).
"""

from __future__ import annotations

import copy
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
_SDPA_MIN_KEYS = 384
_SDPA_BLOCK = 1 << 19  # score elements per row block (2 MiB fp32: the block stays in cache)


class FastLinear(nn.Linear):
    """``nn.Linear`` (optionally followed by GELU) whose inference forward is one oneDNN GEMM with a
    prepacked weight and the activation fused. Shares ``weight``/``bias`` with the layer it was made
    from; the packed copy is rebuilt when the weight changes (``weight._version``).

    ``(..., in_features) -> (..., out_features)``."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters (or tensors)
        self.gelu = gelu  # None, "none" (erf) or "tanh": nn.GELU's ``approximate``
        self._packed: torch.Tensor | None = None
        self._packed_key: tuple | None = None

    def _fast(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (
            _MKLDNN
            and x.device.type == "cpu"
            and x.dtype == w.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and not torch.is_autocast_enabled("cpu")
        )

    def packed_weight(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), -1 if w.is_inference() else w._version, w.shape)  # inference tensors: fixed
        if self._packed_key != key:
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1024)
            self._packed_key = key
        return self._packed

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
        if self.gelu is not None or not self._fast(x) or (bias.requires_grad and torch.is_grad_enabled()):
            return F.linear(x, self.weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), bias, "none", [], "")

    def add_to(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        """``x + self(h)`` as one oneDNN GEMM with a fused sum post-op, or ``None`` where the fast path
        does not apply (autograd, autocast, fused GELU, other dtypes/devices)."""
        if self.gelu is not None or not self._fast(h) or x.dtype != h.dtype:
            return None
        other = x.contiguous()
        return torch.ops.mkldnn._linear_pointwise.binary(h, other, self.packed_weight(), self.bias, "add")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            y = F.linear(x, self.weight, self.bias)
            return y if self.gelu is None else F.gelu(y, approximate=self.gelu)
        if self.gelu is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "gelu", [], self.gelu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", gelu={self.gelu!r}" if self.gelu is not None else "")


def onednn_sdpa_applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`onednn_sdpa` runs ``(B, heads, L, hd)`` attention faster than torch's SDPA:
    fp32 CPU inference (no autograd, no autocast) over at least ``_SDPA_MIN_KEYS`` keys."""
    return (
        _MKLDNN
        and q.dim() == k.dim() == 4
        and q.device.type == "cpu"
        and q.dtype == k.dtype == torch.float32
        and k.shape[-2] >= _SDPA_MIN_KEYS
        and not (torch.is_grad_enabled() and q.requires_grad)
        and not torch.is_autocast_enabled("cpu")
    )


def onednn_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` without a mask, as ``F.scaled_dot_product_attention``: ``q``
    ``(B, heads, L, hd)``, ``k``/``v`` ``(B, heads, S, hd)`` -> ``(B, heads, L, hd)``, stored as
    ``(B, L, heads, hd)`` (so merging the heads afterwards is a free view, as after SDPA).

    Per (batch, head): ``k`` and ``v^T`` made contiguous once, then for row blocks of ``q`` small
    enough for the scores to stay in cache: one oneDNN GEMM for the scores, an in-place softmax, one
    oneDNN GEMM into the output. Vaswani et al. 2017, eq. 1; the blocking only changes which rows are
    computed together (every row's softmax sees all ``S`` keys), so it is exact up to rounding."""
    B, H, L, D = q.shape
    block = max(64, _SDPA_BLOCK // k.shape[-2])
    out = q.new_empty(B, L, H, D)
    for b in range(B):
        for h in range(H):
            kh, vt = k[b, h] * scale, v[b, h].t().contiguous()  # (S, hd), (hd, S): contiguous copies
            for i in range(0, L, block):
                s = torch.ops.mkldnn._linear_pointwise(q[b, h, i : i + block], kh, None, "none", [], "")
                torch.softmax(s, -1, out=s)  # (rows, S)
                out[b, i : i + block, h] = torch.ops.mkldnn._linear_pointwise(s, vt, None, "none", [], "")
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
            child.gelu, child._packed, child._packed_key = gelu, None, None
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
        ref = self.model(x)
        times: dict[str, list[float]] = {}
        for n, m in mods.items():
            out = m(x)  # also the warm-up run
            if n == "eager" or _close(out, ref, self.rtol):
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
    return (tuple(x.shape), x.dtype)


def _close(out, ref, rtol: float) -> bool:
    if not (torch.is_tensor(out) and torch.is_tensor(ref)) or out.shape != ref.shape:
        return False
    return float((out.float() - ref.float()).abs().max()) <= rtol * max(float(ref.abs().max()), 1e-6)


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
