"""onnxruntime runners for exported kinetix models (CPU execution provider).

* :func:`make_session` — an ``InferenceSession`` with full graph optimisation and as many intra-op
  threads as torch uses (``torch.get_num_threads()``) unless told otherwise.
* :class:`OnnxRecognizer` — clip model: ``(B, 3, T, S, S)`` -> logits ``(B, classes)``.
* :class:`OnnxStreamingRecognizer` — online step model (:func:`~kinetix.deploy.export.export_step_onnx`):
  ``step(frame)`` -> that frame's logits, the shift caches held as numpy arrays between calls;
  :meth:`~OnnxStreamingRecognizer.reset` starts a new video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kinetix.errors import ExportError

from ._optional import require

__all__ = ["OnnxRecognizer", "OnnxStreamingRecognizer", "make_session"]


def make_session(model: str | Path | bytes, threads: int | None = None):
    """onnxruntime ``InferenceSession`` on the CPU for a model file (or serialised bytes)."""
    ort = require("onnxruntime", "running ONNX models")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ExportError(f"{model}: no such ONNX file")
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class OnnxRecognizer:
    """A clip model exported by :func:`~kinetix.deploy.export.export_onnx`, run by onnxruntime.

    ``runner(video)`` with ``video`` ``(B, 3, T, S, S)`` (numpy or torch, float) -> numpy logits."""

    def __init__(self, path: str | Path | bytes, threads: int | None = None):
        self.session = make_session(path, threads)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, tuple(inp.shape)

    def __call__(self, video) -> np.ndarray:
        return self.session.run(None, {self.input_name: _numpy(video)})[0]


class OnnxStreamingRecognizer:
    """Frame-by-frame online recognition with an exported step model in onnxruntime.

    ``step(frame)`` takes one frame ``(3, S, S)`` or ``(B, 3, S, S)`` (normalised like the model's
    clips) and returns that frame's logits ``(B, classes)`` as numpy, equal to
    :class:`~kinetix.models.recognizer2d.StreamingRecognizer` on the same weights. The caches are
    numpy arrays fed back each call; :meth:`reset` zeros them (start of a new video).
    """

    def __init__(self, path: str | Path | bytes, threads: int | None = None):
        self.session = make_session(path, threads)
        inputs = self.session.get_inputs()
        if inputs[0].name != "frame" or not all(i.name.startswith("cache_") for i in inputs[1:]):
            raise ExportError(f"{path}: not a kinetix step model (inputs {[i.name for i in inputs]})")
        self.frame_shape = tuple(inputs[0].shape)
        self.cache_names = [i.name for i in inputs[1:]]
        self.cache_shapes = [tuple(i.shape) for i in inputs[1:]]
        self.output_names = ["logits", *(f"new_{n}" for n in self.cache_names)]
        self.reset()

    def reset(self) -> None:
        """Forget the past: all caches zero, as before the first frame of a video."""
        self.caches = [np.zeros(s, dtype=np.float32) for s in self.cache_shapes]

    def step(self, frame) -> np.ndarray:
        """One frame in, its logits ``(B, classes)`` out."""
        x = _numpy(frame)
        if x.ndim == 3:
            x = x[None]
        if x.shape != self.frame_shape:
            raise ExportError(f"frame of shape {x.shape}; this step model takes {self.frame_shape}")
        feeds = {"frame": x, **dict(zip(self.cache_names, self.caches))}
        logits, *self.caches = self.session.run(self.output_names, feeds)
        return logits

    __call__ = step
