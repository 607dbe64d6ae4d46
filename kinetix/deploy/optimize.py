"""The fastest CPU inference for a kinetix model: :func:`optimize_for_inference`.

Candidates (see :mod:`kinetix.utils.inference` for the measurements behind them): ``"eager"``,
``"onednn"`` (every ``nn.Linear`` a prepacked oneDNN GEMM, GELU fused) and ``"onnxruntime"`` (the
model exported with :func:`~kinetix.deploy.export.export_onnx`, checked against PyTorch, run by
onnxruntime with a dynamic batch; needs the ``deploy`` extra). ``"auto"`` times them on the first
input of each shape and keeps the fastest; onnxruntime joins the timing whenever it is installed
(``include_onnxruntime=None``): on the project's CPU it runs the video transformers fastest, while
eager/oneDNN wins for CNNs. Its one-time export costs seconds (tiny models) to about a minute
(B-size); pass ``include_onnxruntime=False`` to skip it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from kinetix.errors import ExportError
from kinetix.utils.inference import InferenceModel

from ._optional import onnxruntime_available, require
from .export import export_onnx
from .runtime import make_session

__all__ = ["BACKENDS", "OnnxRuntimeModule", "optimize_for_inference"]

BACKENDS = ("auto", "eager", "onednn", "onnxruntime")


class OnnxRuntimeModule(nn.Module):
    """``model`` exported at the clip shape of ``example`` (dynamic batch) behind a torch call."""

    def __init__(
        self, model: nn.Module, example: torch.Tensor, threads: int | None = None, rtol: float = 1e-4
    ):
        super().__init__()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            t, s = example.shape[2], example.shape[-1]
            self.batch = None  # dynamic
            try:
                export_onnx(model, path, num_frames=t, input_size=s, dynamic_batch=True, rtol=rtol)
            except ExportError:  # some graphs only export with a fixed batch: batch 1, run per clip
                self.batch = 1
                export_onnx(model, path, num_frames=t, input_size=s, rtol=rtol)
            self.session = make_session(path, threads)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["logits"], {"video": x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None or x.shape[0] == self.batch:
            return self._run(x)
        return torch.cat([self._run(c) for c in x.split(self.batch)])  # fixed-batch graph


def optimize_for_inference(
    model: nn.Module,
    backend: str = "auto",
    *,
    example: torch.Tensor | None = None,
    include_onnxruntime: bool | None = None,
    threads: int | None = None,
    rtol: float = 1e-4,
) -> InferenceModel:
    """The fastest CPU inference path for ``model``: an inference-time switch, ``model`` itself is
    not modified and still trains (the result calls it whenever autograd is on).

    ``backend``: ``"auto"`` (measure and keep the fastest per input shape; onnxruntime among the
    candidates when installed, unless ``include_onnxruntime=False``), ``"eager"``, ``"onednn"`` or
    ``"onnxruntime"``. ``example`` (a batch of clips) makes ``auto`` choose now instead of on the
    first call; ``rtol`` is the largest accepted difference to eager, relative to the logit scale.
    """
    factories = {}
    if include_onnxruntime is None:
        include_onnxruntime = backend == "auto" and onnxruntime_available()
    if backend == "onnxruntime" or include_onnxruntime:
        require("onnxruntime", "the onnxruntime inference backend")
        factories["onnxruntime"] = lambda m, x: OnnxRuntimeModule(m, x[:1], threads, rtol)
    out = InferenceModel(model, backend, factories=factories, rtol=rtol).eval()
    if example is not None:
        with torch.no_grad():
            out(example)
    return out
