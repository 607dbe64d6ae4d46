"""Deployment: ONNX export checked in onnxruntime, onnxruntime runners (clip and online step models)
and the fastest CPU inference path (:func:`optimize_for_inference`)."""

from .export import ExportResult, export_onnx, export_step_onnx, step_cache_spec
from .runtime import OnnxRecognizer, OnnxStreamingRecognizer, make_session

__all__ = [
    "ExportResult",
    "OnnxRecognizer",
    "OnnxStreamingRecognizer",
    "export_onnx",
    "export_step_onnx",
    "make_session",
    "step_cache_spec",
]
