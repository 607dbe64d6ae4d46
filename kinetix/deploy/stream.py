"""Live recognition with an online model: one frame in, one prediction out.

The online TSM models (Lin et al., "TSM: Temporal Shift Module for Efficient Video Understanding",
ICCV 2019, §4: uni-directional shift with cached features) see each frame once: every shifted layer
keeps the previous frame's first ``C/8`` channels, so a frame costs one 2D forward. This module
wires that to real sources:

- :func:`open_source` — a video file, a camera (``/dev/video0``, ``v4l2:/dev/video0``,
  ``avfoundation:0``, ``dshow:video=NAME``), an RTSP/HTTP/UDP URL (anything FFmpeg demuxes), or a
  folder of frames; iterating it yields :class:`SourceFrame` s. A source that cannot be opened
  raises :class:`StreamError`; one that stops mid-stream just ends, with :attr:`FrameSource.error`
  saying why.
- :class:`FramePreprocess` — the test-view transform of the model's ``PretrainedCfg`` for a single
  frame (decode-time resize of the short side, centre crop, mean/std, RGB/BGR), the same pixels
  ``kinetix test`` / ``predict`` feed the model.
- backends with ``step(frame) -> logits`` and ``reset()``: :class:`TorchBackend` wraps
  :class:`~kinetix.models.recognizer2d.StreamingRecognizer`, :class:`OnnxBackend` runs the
  exported step model (explicit shift caches) in onnxruntime.
- :class:`LabelSmoother` — the label is the argmax of the mean logits of the last ``history``
  frames (the official online demo sums the last 12).
- :func:`run_stream` — the loop: read, preprocess, step, smooth, report, draw (``--out``), pace a
  file at its frame rate and drop frames when the model falls behind (``realtime``); Ctrl-C and
  source failures end the loop with the statistics so far.
"""

from __future__ import annotations

import collections
import copy
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

from kinetix.data.io import FrameFolderReader, VideoWriter, frame_to_rgb
from kinetix.data.views import DataSettings, decode_short_side, test_view_transform
from kinetix.engine.datamodule import resolve_data_settings
from kinetix.engine.task import model_from_checkpoint
from kinetix.errors import CheckpointError, ConfigError, KinetixError
from kinetix.models import create_model
from kinetix.models.recognizer2d import Recognizer2D, StreamingRecognizer
from kinetix.models.resnet import BasicBlock, Bottleneck, ResNet
from kinetix.utils.state_dict import read_safetensors_metadata

from ._optional import onnxruntime_available
from .export import export_step_onnx
from .runtime import OnnxStreamingRecognizer

__all__ = [
    "BACKENDS",
    "FramePreprocess",
    "FrameSource",
    "LabelSmoother",
    "OnnxBackend",
    "SourceFrame",
    "StreamError",
    "StreamReport",
    "StreamStats",
    "TorchBackend",
    "draw_label",
    "fuse_conv_bn",
    "load_stream_model",
    "make_backend",
    "open_source",
    "run_stream",
]

BACKENDS = ("auto", "torch", "onnxruntime")
_DEVICE_FORMATS = ("v4l2", "avfoundation", "dshow")
_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class StreamError(KinetixError):
    """A stream source cannot be opened."""


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------


@dataclass
class SourceFrame:
    """One frame of a source: ``index`` (0-based, in arrival order), ``time`` (seconds from the
    source's first frame, presentation time) and its pixels via :meth:`rgb`."""

    index: int
    time: float
    _rgb: Callable[[int | None], np.ndarray]

    def rgb(self, short_side: int | None = None) -> np.ndarray:
        """Upright RGB uint8 ``(H, W, 3)``, scaled so that the short side is ``short_side`` if given."""
        return self._rgb(short_side)


class FrameSource:
    """Iterable of :class:`SourceFrame`. ``fps`` is the nominal frame rate, ``live`` says whether
    frames arrive in real time (camera, network stream) or can be read as fast as wanted (file,
    folder), ``expected_frames`` is the length when the source states it. After the iteration,
    ``error`` says why the source stopped early (``None``: it ended normally) and ``note`` how a
    live source ended."""

    name: str
    fps: float
    live: bool
    expected_frames: int | None = None
    error: str | None = None
    note: str | None = None

    def __iter__(self) -> Iterator[SourceFrame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _AVSource(FrameSource):
    """A file, device or URL decoded by FFmpeg (PyAV), frame by frame."""

    def __init__(self, name: str, url: str, fmt: str | None, live: bool, options: dict, timeout: float):
        self.name, self.live = name, live
        try:
            self._container = av.open(
                url, format=fmt, options=options, timeout=timeout, metadata_errors="ignore"
            )
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise StreamError(f"{name}: cannot open the source ({_short(e)}). {_open_hint(url, fmt)}") from e
        if not self._container.streams.video:
            self._container.close()
            raise StreamError(f"{name}: has no video stream (audio-only, or not a video?)")
        self._stream = s = self._container.streams.video[0]
        s.codec_context.thread_count = 1  # frame threading would delay every frame by the thread count
        s.codec_context.thread_type = "SLICE"
        rate = s.average_rate or s.guessed_rate or s.base_rate
        self.fps = float(rate) if rate else 30.0
        self.expected_frames = int(s.frames) if s.frames and not live else None
        self._t0: float | None = None

    def __iter__(self) -> Iterator[SourceFrame]:
        i = 0
        frames = self._container.decode(self._stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except (av.FFmpegError, OSError, EOFError) as e:
                of = f" of its {self.expected_frames}" if self.expected_frames else ""
                self.error = f"the source stopped after {i}{of} frames: {_short(e)}"
                break
            t = float(frame.time) if frame.time is not None else i / self.fps
            if self._t0 is None:
                self._t0 = t
            yield SourceFrame(i, t - self._t0, lambda side, f=frame: frame_to_rgb(f, side))
            i += 1
        if self.error is None and self.expected_frames and i < self.expected_frames:
            self.error = f"the source ended after {i} of its {self.expected_frames} frames (truncated?)"
        elif self.error is None and self.live:
            self.note = f"the stream ended after {i} frames"

    def close(self) -> None:
        self._container.close()


class _FolderSource(FrameSource):
    """A folder of frame images (read in order; ``fps`` is nominal)."""

    def __init__(self, path: Path, fps: float):
        try:
            self._full = FrameFolderReader(path, fps=fps)
        except KinetixError as e:
            raise StreamError(str(e)) from e
        self.name, self.fps, self.live = str(path), fps, False
        self.expected_frames = self._full.num_frames
        self._scaled: dict[int, FrameFolderReader] = {}

    def _read(self, i: int, side: int | None) -> np.ndarray:
        if side is None:
            return self._full.get_frames([i])[0].numpy()
        if side not in self._scaled:  # the reader the test views use (JPEG draft decode + resize)
            self._scaled[side] = FrameFolderReader(
                self._full.path,
                template=self._full.template,
                start_index=self._full.start_index,
                short_side=side,
            )
        return self._scaled[side].get_frames([i])[0].numpy()

    def __iter__(self) -> Iterator[SourceFrame]:
        for i in range(self._full.num_frames):
            yield SourceFrame(i, i / self.fps, lambda side, i=i: self._read(i, side))


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _open_hint(url: str, fmt: str | None) -> str:
    if fmt in _DEVICE_FORMATS:
        return f"Check that the camera exists and is free, and that FFmpeg was built with {fmt} input."
    if url.startswith(_URL_SCHEMES):
        return "Check the URL and that the server is reachable and streaming."
    return "Check that it is a complete, playable video (e.g. `ffprobe FILE`)."


def open_source(spec: str, *, timeout: float = 10.0, folder_fps: float = 30.0) -> FrameSource:
    """Open ``spec`` as a frame source.

    - a folder: its frame images in order (``folder_fps`` nominal rate);
    - a camera: ``/dev/videoN`` (v4l2) or ``FORMAT:DEVICE`` with FORMAT ``v4l2``, ``avfoundation``
      (macOS, e.g. ``avfoundation:0``) or ``dshow`` (Windows, e.g. ``dshow:video=Integrated Camera``);
    - a URL (``rtsp://``, ``http(s)://``, ``udp://``, ...): RTSP over TCP; ``timeout`` seconds to
      connect and per read;
    - otherwise a video file.
    """
    spec = str(spec)
    fmt, target = None, spec
    head, sep, rest = spec.partition(":")
    if sep and head in _DEVICE_FORMATS:
        fmt, target = head, rest
    elif spec.startswith("/dev/video"):
        fmt = "v4l2"
    if fmt is not None:
        return _AVSource(spec, target, fmt, True, {}, timeout)
    if spec.startswith(_URL_SCHEMES):
        options = {"rtsp_transport": "tcp"} if spec.startswith(("rtsp://", "rtsps://")) else {}
        return _AVSource(spec, spec, None, True, options, timeout)
    path = Path(spec)
    if path.is_dir():
        return _FolderSource(path, folder_fps)
    if not path.exists():
        raise StreamError(f"{spec}: no such file, folder, camera or URL. Check the path.")
    if path.stat().st_size == 0:
        raise StreamError(f"{spec}: the file is empty (0 bytes).")
    return _AVSource(spec, str(path), None, False, {}, timeout)


# ----------------------------------------------------------------------------------------------
# preprocessing, backends, smoothing
# ----------------------------------------------------------------------------------------------


class FramePreprocess:
    """One frame -> model input ``(1, C, H, W)`` float, through the test-view path of
    :mod:`kinetix.data.views` with one centre crop: decode with the short side at
    :func:`~kinetix.data.views.decode_short_side`, then :func:`~kinetix.data.views.test_view_transform`
    — the same pixels the test views of a clip give for that frame. ``settings``: the engine's
    :class:`~kinetix.data.views.DataSettings`, or a model's ``PretrainedCfg``."""

    def __init__(self, settings):
        if not isinstance(settings, DataSettings):
            settings = resolve_data_settings(settings, None)
        self.resize = decode_short_side(settings)
        self.transform = test_view_transform(settings, crops=1)

    def __call__(self, frame: SourceFrame | np.ndarray) -> torch.Tensor:
        img = frame.rgb(self.resize) if isinstance(frame, SourceFrame) else frame
        clip = torch.from_numpy(np.ascontiguousarray(img))[None]  # (T=1, H, W, 3)
        x, _ = self.transform(clip)  # (C, 1, h, w)
        return x.transpose(0, 1)  # (1, C, h, w)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv (eval-mode BN statistics folded into the weights)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True,
    )  # fmt: skip
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every BatchNorm2d that directly follows a conv folded
    into it: consecutive (Conv2d, BatchNorm2d) children of an ``nn.Sequential`` (MobileNetV2,
    ResNet downsampling) and the ``convK`` -> ``bnK`` pairs of ResNet stems and blocks when no
    temporal layer sits between them. The copy must not be trained."""
    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod)
            for i in range(len(kids) - 1):
                if isinstance(kids[i], nn.Conv2d) and isinstance(kids[i + 1], nn.BatchNorm2d):
                    mod[i], mod[i + 1] = _fold(kids[i], kids[i + 1]), nn.Identity()
        elif isinstance(mod, BasicBlock | Bottleneck | ResNet):
            for k in (1, 2, 3):
                conv, bn = getattr(mod, f"conv{k}", None), getattr(mod, f"bn{k}", None)
                between = getattr(mod, "temporal_mid", None) if k == 1 else None
                if (
                    isinstance(conv, nn.Conv2d)
                    and isinstance(bn, nn.BatchNorm2d)
                    and (between is None or isinstance(between, nn.Identity))
                ):
                    setattr(mod, f"conv{k}", _fold(conv, bn))
                    setattr(mod, f"bn{k}", nn.Identity())
    return model


class TorchBackend:
    """Eager PyTorch: a causal recogniser run by :class:`StreamingRecognizer` (one frame, its
    shift caches inside the model). ``step((1, C, H, W)) -> (num_classes,)`` logits.

    ``optimize`` (default) runs an inference copy: BatchNorm folded into the convs before it and
    channels_last memory (oneDNN's preferred layout for convolutions); same logits to float
    rounding. The model itself is left untouched."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, optimize: bool = True):
        model = model.eval()
        if optimize and isinstance(model, Recognizer2D):
            model = fuse_conv_bn(model)
            for m in model.modules():  # 2D convs only (GSM's gate is a Conv3d)
                if isinstance(m, nn.Conv2d):
                    m.to(memory_format=torch.channels_last)
            model.channels_last = True
        self.stream = StreamingRecognizer(model)

    def step(self, frame: torch.Tensor) -> torch.Tensor:
        return self.stream(frame)[0]

    def reset(self) -> None:
        self.stream.reset()


class OnnxBackend:
    """onnxruntime: ``model`` exported as an ONNX step model with explicit shift caches
    (:func:`~kinetix.deploy.export.export_step_onnx`, checked against PyTorch on export) and run by
    :class:`~kinetix.deploy.runtime.OnnxStreamingRecognizer`. ``path``: where the ``.onnx`` goes
    (default: a temporary folder, removed with the backend). Needs the ``deploy`` extra."""

    name = "onnxruntime"

    def __init__(self, model: torch.nn.Module, input_size: int, path: str | Path | None = None):
        self._tmp = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kinetix-stream-")
            path = Path(self._tmp.name) / "step.onnx"
        export_step_onnx(model.eval(), path, input_size=input_size)
        self.runner = OnnxStreamingRecognizer(path, threads=torch.get_num_threads())

    def step(self, frame: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runner.step(frame.numpy()))[0]

    def reset(self) -> None:
        self.runner.reset()


def _model_label(model: torch.nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


def _median_step_ms(backend, frame: torch.Tensor, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        backend.step(frame)
        times.append(1000 * (time.perf_counter() - t))
    backend.reset()
    return float(np.median(times))


def make_backend(name: str, model: torch.nn.Module, input_size: int | None = None, rounds: int = 12):
    """The streaming backend ``name`` (one of :data:`BACKENDS`) for ``model``; ``input_size`` is
    the frame size (default: the model's).

    ``"auto"``: with onnxruntime installed, both backends are built (the ONNX export is checked
    against PyTorch) and timed on ``rounds`` interleaved steps; the faster is returned (its
    ``timings`` attribute holds the medians). Without onnxruntime, or when the export fails, torch."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    try:
        StreamingRecognizer(model)
    except ValueError as e:  # not a causal model
        raise ConfigError(
            f"{_model_label(model)} cannot stream: {e}. Use an online model "
            "(tsm_mobilenetv2_online, tsm_r50_online, test_tsm_online, ...) trained on clips."
        ) from None
    size = input_size or model.pretrained_cfg.input_size
    if name == "torch":
        return TorchBackend(model)
    if name == "onnxruntime":
        return OnnxBackend(model, size)
    torch_backend = TorchBackend(model)
    torch_backend.timings = {}
    if not onnxruntime_available():
        return torch_backend
    try:
        ort_backend = OnnxBackend(model, size)
    except KinetixError as e:  # an export that does not reproduce torch is never used
        torch_backend.timings = {"onnxruntime": f"not used: {e}"}
        return torch_backend
    frame = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for b in (torch_backend, ort_backend):  # warm-up
            _median_step_ms(b, frame, 2)
        ms = {"torch": [], "onnxruntime": []}
        for _ in range(3):  # interleaved
            ms["torch"].append(_median_step_ms(torch_backend, frame, max(1, rounds // 3)))
            ms["onnxruntime"].append(_median_step_ms(ort_backend, frame, max(1, rounds // 3)))
    timings = {k: float(np.median(v)) for k, v in ms.items()}
    best = ort_backend if timings["onnxruntime"] < timings["torch"] else torch_backend
    best.timings = timings
    return best


class LabelSmoother:
    """Label of the mean logits over the last ``history`` frames (1 = no smoothing)."""

    def __init__(self, history: int = 12):
        if history < 1:
            raise ConfigError(f"the smoothing history must be >= 1 frame, got {history}")
        self.logits: collections.deque[torch.Tensor] = collections.deque(maxlen=history)

    def update(self, logits: torch.Tensor) -> tuple[int, float]:
        """Add one frame's logits ``(K,)``; returns (label, its probability under the mean logits)."""
        self.logits.append(logits.float())
        probs = torch.softmax(torch.stack(tuple(self.logits)).mean(0), -1)
        p, i = probs.max(0)
        return int(i), float(p)

    def reset(self) -> None:
        self.logits.clear()


def draw_label(frame: np.ndarray, text: str, right: str = "") -> np.ndarray:
    """``frame (H, W, 3)`` uint8 with a white band on top holding ``text`` (and ``right`` at the right end)."""
    img = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(img)
    th = draw.textbbox((0, 0), text or " ")[3]
    draw.rectangle([0, 0, img.width, th + 6], fill=(255, 255, 255))
    draw.text((4, 3), text, fill=(0, 0, 0))
    if right:
        rw = draw.textbbox((0, 0), right)[2]
        draw.text((max(4, img.width - rw - 4), 3), right, fill=(0, 0, 0))
    return np.asarray(img)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------


@dataclass
class StreamStats:
    """Counts and per-frame latencies (decode + preprocess + model, milliseconds) of a run;
    ``cpu_ms`` is the same span in this thread's CPU time (with one torch thread, the time on an
    otherwise idle core: a steadier measure on a shared machine)."""

    frames_read: int = 0
    processed: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float, cpu: bool = False) -> float:
        values = self.cpu_ms if cpu else self.latency_ms
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> str:
        return (
            f"{self.processed} frames processed, {self.dropped} dropped, of {self.frames_read} read in "
            f"{self.seconds:.1f} s: {self.fps:.1f} frames/s; latency (decode + preprocess + model) "
            f"p50 {self.percentile(50):.1f} ms, p95 {self.percentile(95):.1f} ms"
        )


@dataclass
class FrameResult:
    index: int  # frame number in the source
    time: float  # seconds from the source's first frame
    label: int  # smoothed label
    name: str
    prob: float  # probability of the smoothed label
    latency_ms: float
    logits: torch.Tensor | None = None  # this frame's raw logits (kept with keep_logits=True)


@dataclass
class StreamReport:
    stats: StreamStats
    results: list[FrameResult]
    ended: str  # "end", "interrupted", how a live source ended, or why the source stopped early
    failed: bool = False  # the source stopped early (truncated file, decode or network error)


def run_stream(
    source: FrameSource,
    backend,
    preprocess: FramePreprocess,
    class_names: list[str] | None = None,
    *,
    smooth: int = 12,
    realtime: bool = False,
    out: str | Path | None = None,
    on_result: Callable[[FrameResult, StreamStats], None] | None = None,
    max_frames: int | None = None,
    keep_logits: bool = False,
) -> StreamReport:
    """Run ``backend`` on every frame of ``source``; see the module docstring.

    ``realtime`` paces a file or folder at its frame rate and drops a frame (counted in
    ``stats.dropped``) when the next one is already due; live sources are paced by their arrival.
    ``out`` writes every frame read (dropped ones with the last label) with the label drawn.
    The latency of a frame is decode + preprocess + model (for a live source the wait for the frame
    is left out, its RGB conversion counted in preprocessing).
    Ctrl-C ends the run with ``ended == "interrupted"``; a source failure with its reason."""
    stats, results = StreamStats(), []
    smoother = LabelSmoother(smooth)
    names = class_names or []
    writer = VideoWriter(out, source.fps) if out is not None else None
    backend.reset()
    last = ""
    period = 1.0 / source.fps if source.fps > 0 else 0.0
    pace = realtime and not source.live
    frames = iter(source)
    start = time.perf_counter()
    ended = "end"
    try:
        with torch.inference_mode():
            while max_frames is None or stats.frames_read < max_frames:
                t0, c0 = time.perf_counter(), time.thread_time()
                frame = next(frames, None)
                read = time.perf_counter() - t0  # decode (a file) or wait + decode (a live source)
                read_cpu = time.thread_time() - c0
                if frame is None:
                    break
                stats.frames_read += 1
                if pace:
                    now, due = time.perf_counter(), start + frame.time
                    if now < due:
                        time.sleep(due - now)
                    elif now >= due + period:  # the next frame is already due: skip this one
                        stats.dropped += 1
                        if writer is not None:
                            writer.write(draw_label(frame.rgb(), last, "(dropped)"))
                        continue
                t2, c2 = time.perf_counter(), time.thread_time()
                logits = torch.as_tensor(backend.step(preprocess(frame))).reshape(-1)
                label, prob = smoother.update(logits)
                latency = 1000 * (time.perf_counter() - t2 + (0.0 if source.live else read))
                stats.cpu_ms.append(1000 * (time.thread_time() - c2 + read_cpu))
                stats.processed += 1
                stats.latency_ms.append(latency)
                stats.seconds = time.perf_counter() - start
                name = names[label] if label < len(names) else str(label)
                res = FrameResult(
                    frame.index, frame.time, label, name, prob, latency, logits if keep_logits else None
                )
                results.append(res)
                last = f"{name} ({100 * prob:.0f}%)"
                if writer is not None:
                    writer.write(draw_label(frame.rgb(), last, f"{latency:.0f} ms"))
                if on_result is not None:
                    on_result(res, stats)
    except KeyboardInterrupt:
        ended = "interrupted"
    finally:
        stats.seconds = time.perf_counter() - start
        if writer is not None:
            writer.close()
        source.close()
    failed = ended == "end" and source.error is not None
    if ended == "end":
        ended = source.error or source.note or "end"
    return StreamReport(stats, results, ended, failed)


# ----------------------------------------------------------------------------------------------
# model loading
# ----------------------------------------------------------------------------------------------


def load_stream_model(checkpoint: str | Path | None, model_name: str | None):
    """``(model, data settings, class_names)`` from a kinetix checkpoint (folder, run folder or
    ``model.safetensors``: the model, its arguments, data settings and class names come from it,
    as for ``kinetix predict``) or a registered model (``model_name``, with ``checkpoint`` a weights
    file for it). A weights file written by ``kinetix convert`` names its model itself."""
    if checkpoint is None and model_name is None:
        raise ConfigError("pass --checkpoint CKPT (a trained kinetix checkpoint) or --model NAME")
    if checkpoint is None:
        model, cfg, names = create_model(model_name, pretrained=True).eval(), None, None
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint. Check the path.")
        if model_name is None and path.is_file() and path.suffix == ".safetensors":
            meta = read_safetensors_metadata(path)
            if not meta.get("config"):  # converted / saved weights: the model name is in the metadata
                model_name = meta.get("kinetix_model")
        model, cfg, names = model_from_checkpoint(path, model_name)
    settings = resolve_data_settings(
        model.pretrained_cfg, cfg.data if cfg else None, cfg.eval if cfg else None
    )
    return model, settings, names
