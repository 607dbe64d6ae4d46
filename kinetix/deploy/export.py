"""ONNX export of kinetix recognisers, checked in onnxruntime before the file is written.

Only ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` based exporter) is used: the
legacy TorchScript exporter traces TSM's shift wrongly (max |diff| 5.45 on TSM-R50 logits of
scale 5.5). Every export is run in onnxruntime on the same input as the eager model and refused
(:class:`~kinetix.errors.ExportError`, nothing written) when ``max |onnx − torch|`` exceeds
``rtol`` times the logit scale (``max |logit|``).

* :func:`export_onnx` — clip model, input ``video (B, 3, T, S, S)`` float -> ``logits (B, classes)``.
* :func:`export_step_onnx` — online TSM/GSM (causal temporal layers) as a *step* model:
  ``frame (B, 3, S, S)`` and every temporal layer's cache as explicit inputs ->
  ``logits (B, classes)`` and the updated caches, so any ONNX runtime can stream
  (:class:`~kinetix.deploy.runtime.OnnxStreamingRecognizer` does it with onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from kinetix.errors import ExportError, KinetixError
from kinetix.layers.temporal import GateShift, TemporalShift
from kinetix.models.recognizer2d import Recognizer2D, StreamingRecognizer

from ._optional import require
from .runtime import OnnxStreamingRecognizer, make_session

__all__ = ["ExportResult", "export_onnx", "export_step_onnx", "step_cache_spec"]


@dataclass
class ExportResult:
    """What was written and how closely onnxruntime reproduces PyTorch on the check input."""

    path: Path
    input_shape: tuple[int, ...]
    max_abs_diff: float
    logit_scale: float  # max |logit| of the eager model on the check input
    seconds: float
    dynamic_batch: bool = False
    step: bool = False

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.logit_scale, 1e-12)

    def summary(self) -> str:
        kind = "step model" if self.step else "model"
        return (
            f"wrote {kind} {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB), input "
            f"{'x'.join(map(str, self.input_shape))}{' (dynamic batch)' if self.dynamic_batch else ''}; "
            f"onnxruntime vs PyTorch: max|diff| {self.max_abs_diff:.2e} on logits of scale "
            f"{self.logit_scale:.3g} ({self.rel_diff:.1e} relative); {self.seconds:.1f} s"
        )


def _input_shape(model: nn.Module, num_frames, input_size, batch_size) -> tuple[int, int, int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None)
    t = num_frames or getattr(model, "num_frames", None) or (cfg.num_frames if cfg else None)
    s = input_size or (cfg.input_size if cfg else None)
    if not t or not s:
        raise ExportError("the model has no pretrained_cfg: pass num_frames and input_size")
    return (batch_size, 3, int(t), int(s), int(s))


def _check_exportable(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if type(model).__name__ == "EVAD":
        raise ExportError(
            "EVAD cannot be exported to ONNX honestly yet: (1) the RoI feature extraction "
            "(kinetix.detection.sparse_rcnn.multiscale_roi_align) loops over the FPN levels present "
            "in the data (level.unique().tolist()), which torch.export cannot trace (data-dependent "
            "guard); (2) postprocess returns per-clip detections whose number depends on the data "
            "(person-score threshold). The detector runs in PyTorch (kinetix detect)."
        )


@contextlib.contextmanager
def _quiet():
    """torch.onnx's dynamo exporter prints progress and warnings on success; keep them for errors."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _torch_export(module: nn.Module, args: tuple, names_in, names_out, dynamic_shapes=None, opset=None):
    require("onnx")
    require("onnxscript")
    kw = {} if opset is None else {"opset_version": opset}
    # grad mode on while tracing: the in-place inference shortcuts (TSM's residual shift done and
    # undone in place) are skipped for their out-of-place forms, which trace into far smaller graphs
    with _quiet() as log, torch.enable_grad():
        try:
            return torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=list(names_in),
                output_names=list(names_out),
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
                **kw,
            )
        except Exception as e:  # the exporter raises many types; report one
            tail = log.getvalue().strip().splitlines()[-5:]
            raise ExportError(
                f"torch.onnx.export(dynamo=True) failed for {type(module).__name__}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                + (f" ({' / '.join(tail)})" if tail else "")
            ) from e


def _save_checked(program, path: Path, check) -> None:
    """Save to a temporary file next to ``path``, run ``check(tmp)`` (raises on mismatch), rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        program.save(str(tmp))
        try:
            check(tmp)
        except KinetixError:
            raise
        except Exception as e:  # onnxruntime refuses the graph (its errors have no common type)
            raise ExportError(
                f"onnxruntime cannot load or run the exported graph: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)


def _compare(ref: torch.Tensor, out: np.ndarray, rtol: float, what: str) -> tuple[float, float]:
    out_t = torch.from_numpy(np.asarray(out)).to(ref.dtype)
    if out_t.shape != ref.shape:
        raise ExportError(
            f"{what}: onnxruntime output shape {tuple(out_t.shape)} != PyTorch {tuple(ref.shape)}"
        )
    diff = float((out_t - ref).abs().max())
    scale = float(ref.abs().max())
    if not np.isfinite(diff) or diff > rtol * max(scale, 1e-6):
        raise ExportError(
            f"{what}: the ONNX model does not reproduce PyTorch (max |diff| {diff:.3g} on logits of scale "
            f"{scale:.3g}, allowed {rtol:g} relative); nothing written"
        )
    return diff, scale


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    num_frames: int | None = None,
    input_size: int | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    rtol: float = 1e-4,
    opset: int | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (in eval mode) to ONNX at ``path``; check it in onnxruntime first.

    Input ``video`` ``(batch_size, 3, T, S, S)`` float (``T``, ``S`` default to the model's
    ``pretrained_cfg``), output ``logits``. ``dynamic_batch`` makes the batch dimension symbolic
    (checked at two batch sizes). Raises :class:`~kinetix.errors.ExportError` when the export fails
    or onnxruntime's logits differ from PyTorch's by more than ``rtol`` of the logit scale; the file
    is only written after the check passed.
    """
    _check_exportable(model)
    require("onnxruntime", "checking the ONNX export")
    path = Path(path)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        shape = _input_shape(model, num_frames, input_size, batch_size)
        gen = torch.Generator().manual_seed(seed)
        trace_b = max(batch_size, 2) if dynamic_batch else batch_size  # size 1 would be specialised
        x = torch.randn((trace_b, *shape[1:]), generator=gen)
        dyn = None
        if dynamic_batch:
            dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},)  # by position: forward's arg name varies
        with torch.no_grad():
            refs = {
                b: model(x[:b]) for b in sorted({batch_size, trace_b, 1 if dynamic_batch else batch_size})
            }
        if not all(torch.is_tensor(r) for r in refs.values()):
            raise ExportError(f"{type(model).__name__}.forward must return a tensor of logits to be exported")
        program = _torch_export(model, (x[:trace_b],), ["video"], ["logits"], dyn, opset)
        result = {}

        def check(tmp: Path) -> None:
            sess = make_session(tmp)
            for b, ref in refs.items():
                out = sess.run(["logits"], {"video": x[:b].numpy()})[0]
                result[b] = _compare(ref, out, rtol, f"{type(model).__name__} batch {b}")

        try:
            _save_checked(program, path, check)
        except ExportError as e:
            if not dynamic_batch or "onnxruntime cannot" not in str(e):
                raise
            raise ExportError(
                f"{type(model).__name__} with a dynamic batch: {e}. Export it with a fixed batch "
                "(without --dynamic-batch / dynamic_batch=False)"
            ) from e
    finally:
        model.train(was_training)
    diff = max(d for d, _ in result.values())
    scale = result[batch_size][1]
    return ExportResult(path, shape, diff, scale, time.perf_counter() - t0, dynamic_batch)


# ----------------------------------------------------------------------------------------------
# online step models
# ----------------------------------------------------------------------------------------------


def _temporal_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, TemporalShift | GateShift)]


def _flatten(cache) -> list[torch.Tensor]:
    return list(cache) if isinstance(cache, tuple) else [cache]


def step_cache_spec(model: Recognizer2D, input_size: int | None = None, batch_size: int = 1):
    """Shapes of the caches of every causal temporal layer for one frame: a list (one entry per
    layer) of lists of shapes (TSM: one ``(B, C/8, H, W)``; GSM: gate taps of t-1 and t-2
    ``(B, 2, 3, H, W)`` and the gated features of t-1 ``(B, 2, C/2, H, W)``)."""
    s = input_size or model.pretrained_cfg.input_size
    streamer = StreamingRecognizer(model)
    with torch.no_grad():
        streamer(torch.zeros(batch_size, 3, s, s))
        streamer(torch.zeros(batch_size, 3, s, s))  # GSM's t-2 taps exist from the second frame on
    spec = [[tuple(c.shape) for c in _flatten(m.cache)] for m in streamer.layers]
    streamer.reset()
    return spec


class _StepModel(nn.Module):
    """``(frame, *caches) -> (logits, *new caches)`` around a causal :class:`Recognizer2D`; the caches
    are passed to the temporal layers for this call only (zeros = the first frame of a video)."""

    def __init__(self, model: Recognizer2D, spec):
        super().__init__()
        self.model = model
        self.layers = _temporal_layers(model)
        self.spec = spec

    def forward(self, frame: torch.Tensor, *caches: torch.Tensor):
        m, it = self.model, iter(caches)
        for layer, shapes in zip(self.layers, self.spec):
            group = tuple(next(it) for _ in shapes)
            layer.cache = group if isinstance(layer, GateShift) else group[0]
            layer.streaming = True
        try:
            if m.channels_last:
                frame = frame.contiguous(memory_format=torch.channels_last)
            feats = m.backbone.forward_features(frame).mean((2, 3))  # (B, D)
            logits = m.fc(m.head_drop(feats))
            new = [c for layer in self.layers for c in _flatten(layer.cache)]
        finally:
            for layer in self.layers:
                layer.streaming, layer.cache = False, None
        return (logits, *new)


def export_step_onnx(
    model: Recognizer2D,
    path: str | Path,
    *,
    input_size: int | None = None,
    batch_size: int = 1,
    check_frames: int = 6,
    rtol: float = 1e-4,
    opset: int | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export an online (causal) TSM/GSM recogniser as a step model and check it by streaming
    ``check_frames`` frames through onnxruntime against :class:`StreamingRecognizer` (each frame's
    logits within ``rtol`` of the logit scale).

    Inputs ``frame (B, 3, S, S)``, ``cache_0 ... cache_{n-1}``; outputs ``logits (B, classes)``,
    ``new_cache_0 ... new_cache_{n-1}`` (feed them back as the next frame's caches; zeros start a
    video). Raises :class:`~kinetix.errors.ExportError` for non-causal models.
    """
    if not isinstance(model, Recognizer2D):
        raise ExportError(
            f"step export needs an online 2D recogniser (e.g. tsm_r50_online), got {type(model).__name__}"
        )
    try:
        streamer = StreamingRecognizer(model)
    except ValueError as e:
        raise ExportError(f"cannot export a step model: {e}") from e
    require("onnxruntime", "checking the ONNX export")
    path = Path(path)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        s = input_size or model.pretrained_cfg.input_size
        spec = step_cache_spec(model, s, batch_size)
        shapes = [sh for group in spec for sh in group]
        gen = torch.Generator().manual_seed(seed)
        frames = torch.randn(check_frames, batch_size, 3, s, s, generator=gen)
        caches = tuple(torch.randn(sh, generator=gen) for sh in shapes)  # trace with non-trivial caches
        n = len(shapes)
        step = _StepModel(model, spec)
        program = _torch_export(
            step,
            (frames[0], *caches),
            ["frame", *(f"cache_{i}" for i in range(n))],
            ["logits", *(f"new_cache_{i}" for i in range(n))],
            opset=opset,
        )
        streamer.reset()
        with torch.no_grad():
            refs = [streamer(f) for f in frames]
        streamer.reset()
        result = []

        def check(tmp: Path) -> None:
            runner = OnnxStreamingRecognizer(tmp)
            for i, (f, ref) in enumerate(zip(frames, refs)):
                result.append(_compare(ref, runner.step(f.numpy()), rtol, f"step model, frame {i}"))

        _save_checked(program, path, check)
    finally:
        model.train(was_training)
    diff = max(d for d, _ in result)
    scale = max(sc for _, sc in result)
    return ExportResult(path, (batch_size, 3, s, s), diff, scale, time.perf_counter() - t0, step=True)
