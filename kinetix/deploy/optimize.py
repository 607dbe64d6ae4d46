"""The fastest CPU inference for a kinetix model: :func:`optimize_for_inference`.

Measured on the project's CPU (2 threads, fp32): the torch CPU wheel runs ``nn.Linear`` through MKL
sgemm, which reaches about half of the machine's GEMM rate; the same products through oneDNN with a
prepacked weight (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's freezing pass uses)
run ~2x faster, and so do onnxruntime's. Video transformers spend most of their time in these
GEMMs, CNNs in oneDNN convolutions already. The candidates are:

* ``"eager"`` — the model as it is.
* ``"onednn"`` — a copy of the module tree sharing the parameters, every ``nn.Linear`` replaced by
  :class:`FastLinear` (prepacked oneDNN weight, GELU fused into the first MLP layer). Exact up to
  float rounding; under autograd, autocast, on other devices/dtypes it runs ``F.linear`` as before,
  so the copy still trains and the original module is untouched.
* ``"onnxruntime"`` — the model exported with :func:`~kinetix.deploy.export.export_onnx` (checked
  against PyTorch) and run by onnxruntime (the ``deploy`` extra); batch size is dynamic.
* ``"auto"`` (default) — times the candidates (``eager`` and ``onednn``, plus ``onnxruntime`` when
  ``include_onnxruntime``) on the first input of each shape, interleaved, keeps the fastest whose
  output matches eager within ``rtol``, and uses it from then on. Nothing is vendor-specific.

The returned :class:`InferenceModel` is an ``nn.Module`` that forwards attribute access to the
original model (``pretrained_cfg``, ``num_classes``, ...); with autograd enabled it calls the
original model, so it never changes training.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import ConfigError

from ._optional import onnxruntime_available

__all__ = ["BACKENDS", "FastLinear", "InferenceModel", "onednn_copy", "optimize_for_inference"]

BACKENDS = ("auto", "eager", "onednn", "onnxruntime")
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FastLinear(nn.Linear):
    """``nn.Linear`` (optionally followed by GELU) whose inference forward is one oneDNN GEMM with a
    prepacked weight and the activation fused. Shares ``weight``/``bias`` with the layer it was made
    from; the packed copy is rebuilt when the weight changes (``weight._version``).

    ``(..., in_features) -> (..., out_features)``."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters
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
        key = (w.data_ptr(), w._version, w.shape)
        if self._packed_key != key:
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1024)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            y = F.linear(x, self.weight, self.bias)
            return y if self.gelu is None else F.gelu(y, approximate=self.gelu)
        if self.gelu is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "gelu", [], self.gelu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", gelu={self.gelu!r}" if self.gelu is not None else "")


def _share_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def onednn_copy(model: nn.Module) -> nn.Module:
    """``model``'s module tree with every ``nn.Linear`` a :class:`FastLinear` (parameters shared);
    a Linear directly followed by an ``nn.GELU`` sibling named ``act`` (the transformer MLP) gets the
    activation fused and the ``act`` slot becomes ``nn.Identity``."""
    out = _share_copy(model)
    for parent in list(out.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            if type(child) is nn.Linear:
                gelu = None
                act = children.get("act")
                if name == "fc1" and isinstance(act, nn.GELU) and _MKLDNN:
                    gelu = act.approximate
                    parent.act = nn.Identity()
                setattr(parent, name, FastLinear(child, gelu))
    return out


class _OnnxRuntimeModule(nn.Module):
    """onnxruntime session behind a torch-tensor call (inference only)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int | None, rtol: float):
        super().__init__()
        from .export import export_onnx
        from .runtime import make_session

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            t, s = example.shape[2], example.shape[-1]
            export_onnx(model, path, num_frames=t, input_size=s, dynamic_batch=True, rtol=rtol)
            self.session = make_session(path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["logits"], {"video": x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def _time(fn: Callable, x: torch.Tensor, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


class InferenceModel(nn.Module):
    """``model`` with a faster inference forward (see :func:`optimize_for_inference`).

    ``backend`` is the requested mode; :attr:`chosen` maps each input signature seen so far to the
    backend that runs it, :attr:`timings` to the measured median seconds per candidate."""

    def __init__(
        self,
        model: nn.Module,
        backend: str = "auto",
        *,
        include_onnxruntime: bool = False,
        threads: int | None = None,
        rtol: float = 1e-4,
        rounds: int = 3,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"inference backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if backend == "onnxruntime" or include_onnxruntime:
            from ._optional import require

            require("onnxruntime", "the onnxruntime inference backend")
        self.model = model
        self.backend = backend
        self.include_onnxruntime = include_onnxruntime or backend == "onnxruntime"
        self.threads, self.rtol, self.rounds = threads, rtol, rounds
        self.candidates: dict[str, nn.Module] = {}
        self.chosen: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}
        self._ort: dict[tuple, nn.Module] = {}

    # attribute access falls through to the wrapped model (pretrained_cfg, num_classes, ...)
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def _candidate(self, name: str, x: torch.Tensor) -> nn.Module:
        if name == "eager":
            return self.model
        if name == "onednn":
            if "onednn" not in self.candidates:
                self.candidates["onednn"] = onednn_copy(self.model)
            return self.candidates["onednn"]
        key = tuple(x.shape[1:])  # onnxruntime: exported per clip shape, dynamic batch
        if key not in self._ort:
            self._ort[key] = _OnnxRuntimeModule(self.model, x[:1], self.threads, self.rtol)
        return self._ort[key]

    def _choose(self, x: torch.Tensor) -> str:
        if self.backend != "auto":
            return self.backend
        names = ["eager", "onednn"] + (["onnxruntime"] if self.include_onnxruntime else [])
        mods = {n: self._candidate(n, x) for n in names}
        ref = self.model(x)
        ok = {}
        for n, m in mods.items():
            out = m(x)  # also the warm-up run
            scale = float(ref.abs().max()) if torch.is_tensor(ref) else 1.0
            same = torch.is_tensor(ref) and out.shape == ref.shape
            ok[n] = n == "eager" or (same and float((out - ref).abs().max()) <= self.rtol * max(scale, 1e-6))
        times: dict[str, list[float]] = {n: [] for n in names if ok[n]}
        for _ in range(self.rounds):  # interleaved rounds: load changes hit every candidate alike
            for n in times:
                times[n] += _time(mods[n], x, 1)
        med = {n: statistics.median(v) for n, v in times.items()}
        self.timings[self._signature(x)] = med
        return min(med, key=med.get)

    @staticmethod
    def _signature(x: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not torch.is_tensor(x) or self.model.training:
            return self.model(x)  # training / autograd: the original module, untouched
        sig = self._signature(x)
        if sig not in self.chosen:
            self.chosen[sig] = self._choose(x)
        return self._candidate(self.chosen[sig], x)(x)

    def train(self, mode: bool = True):
        self.model.train(mode)
        for m in self.candidates.values():
            m.train(mode)
        self.training = mode
        return self


def optimize_for_inference(
    model: nn.Module,
    backend: str = "auto",
    *,
    example: torch.Tensor | None = None,
    include_onnxruntime: bool = False,
    threads: int | None = None,
    rtol: float = 1e-4,
) -> InferenceModel:
    """The fastest CPU inference path for ``model`` (an inference-time switch, see the module doc).

    ``backend``: ``"auto"`` (measure and keep the fastest per input shape), ``"eager"``, ``"onednn"``
    or ``"onnxruntime"``. ``example`` (a batch of clips) makes ``auto`` choose now instead of on the
    first call. The model is put in eval mode; ``model`` itself is not modified and still trains.
    """
    if backend == "onnxruntime" and not onnxruntime_available():
        from ._optional import require

        require("onnxruntime", "the onnxruntime inference backend")
    out = InferenceModel(model, backend, include_onnxruntime=include_onnxruntime, threads=threads, rtol=rtol)
    out.eval()
    if example is not None:
        with torch.no_grad():
            out(example)
    return out
