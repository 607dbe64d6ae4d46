"""Deployment: ONNX export checked in onnxruntime, onnxruntime runners (clip and online step models),
the fastest CPU inference path (:func:`optimize_for_inference`) and live streaming
(:mod:`kinetix.deploy.stream`)."""

from kinetix.utils.inference import FastLinear, InferenceModel, onednn_copy

from .export import ExportResult, export_onnx, export_step_onnx, step_cache_spec
from .optimize import BACKENDS, OnnxRuntimeModule, optimize_for_inference
from .runtime import OnnxRecognizer, OnnxStreamingRecognizer, make_session

__all__ = [
    "BACKENDS",
    "ExportResult",
    "FastLinear",
    "InferenceModel",
    "OnnxRecognizer",
    "OnnxRuntimeModule",
    "OnnxStreamingRecognizer",
    "export_onnx",
    "export_step_onnx",
    "make_session",
    "onednn_copy",
    "optimize_for_inference",
    "step_cache_spec",
]
