"""Frame-accurate video reading over PyAV (FFmpeg), frame folders, and a small video writer.

``VideoReader(path).get_frames(indices) -> uint8 (T, H, W, 3)`` RGB, where frame ``i`` is the ``i``-th
frame in presentation order (as a full sequential decode would number it; pts-based, so variable
frame rate videos index consistently). Only what a clip needs is decoded:

1. one demux pass (no decoding) builds a frame index: the sorted packet timestamps and the keyframe
   positions; it is cached per file in a small LRU keyed by ``(path, mtime, size)``;
2. the requested frames are grouped into spans; a new span (seek) starts only when the keyframe
   before the next frame lies more than ``SEEK_COST`` frames past the last decoded one, i.e. when a
   seek saves real work (GOP-aware merging);
3. for each span: seek to that keyframe and decode forward; frames that are neither wanted nor
   referenced by other frames (non-reference B-frames) are discarded by the decoder unparsed, and
   once the last wanted packet is in, the decoder is drained rather than fed more packets;
4. only the kept frames are converted to RGB (resized on decode when ``short_side`` is set) and
   rotated upright from the display matrix.

Files whose packets carry no timestamps or keyframe flags fall back to a sequential decode (and
count frames by decoding). A file whose tail is cut off keeps the frame count its header declares
(so clips are sampled over the whole video, as intended) and a request for a frame that is not
there raises :class:`~kinetix.errors.VideoDecodeError`: a damaged sample is never silently
re-sampled from the part that survived. Frames after a resolution change mid-stream are scaled to
the stream's initial size. Unreadable inputs raise :class:`kinetix.errors.VideoDecodeError` naming the file, the cause
and a fix. ``FrameFolderReader`` offers the same interface for folders of jpg/png frames
(Something-Something V1, AVA rawframes); ``open_video`` picks the right one.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from kinetix.errors import VideoDecodeError

__all__ = [
    "SEEK_COST",
    "FrameFolderReader",
    "VideoReader",
    "VideoWriter",
    "clear_index_cache",
    "frame_to_rgb",
    "open_video",
    "write_video",
]

SEEK_COST = 8  # frames: decoding up to this many extra frames is cheaper than a seek + decoder flush
_INDEX_CACHE_SIZE = 64
_INDEX_CACHE: OrderedDict[tuple, _FrameIndex] = OrderedDict()
_FIX_FILE = "Check that the file is a complete, playable video (e.g. `ffprobe FILE`) or drop it from the list"


@dataclass
class _FrameIndex:
    """Per-file frame table: frame i has timestamp ``pts[i]`` (stream time base)."""

    pts: np.ndarray | None  # (N,) int64, sorted; None -> no usable timestamps, decode sequentially
    key_pos: np.ndarray  # (K,) frame indices of keyframes (presentation order), sorted
    key_seek: np.ndarray  # (K,) seek timestamp of each keyframe: min(pts, dts), never past the frame
    num_frames: int  # frames the file declares (its header), or the frames present if it declares none
    rotation: int | None = None  # display-matrix rotation (degrees ccw), known after the first decode
    present: int | None = None  # frames actually in the file when fewer than declared (truncated)


def clear_index_cache() -> None:
    """Forget all cached frame indices (e.g. to time cold opens)."""
    _INDEX_CACHE.clear()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file does not exist", "Check the path and the dataset root")
    if path.is_dir():
        raise VideoDecodeError(
            path, "is a directory", "Use FrameFolderReader / open_video() for folders of frames"
        )
    if not path.is_file():  # reading a pipe or a device could block or never end
        raise VideoDecodeError(path, "not a regular file (a pipe, device or socket)", "Pass a video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)", "Re-download or re-encode it")


def _open_container(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise VideoDecodeError(
            path, f"FFmpeg cannot open it as a media file (truncated, corrupt or not a video: {e})", _FIX_FILE
        ) from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoDecodeError(
            path, f"no video stream (found: {', '.join(kinds)}; audio-only file?)", _FIX_FILE
        )
    return container, container.streams.video[0]


def _declared_frames(stream, seen: int, discarded: int) -> int | None:
    """Frames the header promises when the file holds fewer (a cut-off tail), else None.

    MP4/MOV (moov at the front) state the sample count; other containers only a duration, which
    is trusted when it exceeds the packets' span by more than a second and 10%."""
    declared = int(stream.frames or 0)
    if declared:
        return declared if declared > seen + discarded else None
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base and rate:
        expected = round(float(stream.duration * stream.time_base) * float(rate))
        if expected > 1.1 * seen + float(rate):
            return expected
    return None


def _scan_packets(path: Path, container, stream) -> _FrameIndex:
    """Demux (no decode) the video stream once and build the frame table."""
    pts, dts, key = [], [], []
    discarded = 0
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0:  # flush packet
                continue
            if pkt.is_discard:  # frame dropped by an edit list
                discarded += 1
                continue
            pts.append(pkt.pts)
            dts.append(pkt.dts)
            key.append(pkt.is_keyframe)
    except av.FFmpegError:  # damaged tail: keep what could be read; the declared count tells the rest
        pass
    if not pts:
        raise VideoDecodeError(path, "the video stream has no frames", _FIX_FILE)
    declared = _declared_frames(stream, len(pts), discarded)
    if not any(key) or any(p is None for p in pts) or len(set(pts)) != len(pts):  # cannot seek safely
        n = _count_by_decoding(path)
        if declared is not None:
            return _FrameIndex(None, np.zeros(1, np.int64), np.zeros(1, np.int64), declared, present=n)
        return _FrameIndex(None, np.zeros(1, np.int64), np.zeros(1, np.int64), n)
    first = key.index(True)  # decoders drop frames before the first keyframe (decode order)
    pts, dts, key = pts[first:], dts[first:], np.array(key[first:])
    pts_arr = np.array(pts, dtype=np.int64)
    dts_arr = np.array([p if d is None else d for p, d in zip(pts, dts)], dtype=np.int64)
    order = np.argsort(pts_arr, kind="stable")  # decode order -> presentation order
    pts_sorted = pts_arr[order]
    key_sorted = key[order]
    key_pos = np.flatnonzero(key_sorted)
    key_seek = np.minimum(pts_arr, dts_arr)[order][key_pos]
    if declared is not None:
        return _FrameIndex(pts_sorted, key_pos, key_seek, declared, present=len(pts_sorted))
    return _FrameIndex(pts_sorted, key_pos, key_seek, len(pts_sorted))


def _count_by_decoding(path: Path) -> int:
    container, stream = _open_container(path)
    n = 0
    try:
        for _ in container.decode(stream):
            n += 1
    except av.FFmpegError:
        pass
    finally:
        container.close()
    if n == 0:
        raise VideoDecodeError(path, "no frame of the video stream could be decoded", _FIX_FILE)
    return n


def _display_size(w: int, h: int, short_side: int | None) -> tuple[int, int]:
    """Output (width, height) after scaling the short side to ``short_side`` (aspect kept)."""
    if short_side is None:
        return w, h
    scale = short_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _checked_indices(path, indices, n: int, what: str) -> np.ndarray:
    """``indices`` as a flat int64 array; ``IndexError`` naming the file if one is out of range."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise IndexError(f"{path}: frame index {bad} out of range: the {what} has {n} frames (0..{n - 1})")
    return idx


def frame_to_rgb(
    frame: av.VideoFrame, short_side: int | None = None, base_size: tuple[int, int] | None = None
) -> np.ndarray:
    """One decoded frame -> upright RGB uint8 ``(H, W, 3)``, scaled on conversion so that the short
    side is ``short_side`` (aspect kept) when given. ``base_size`` ``(w, h)`` is the size the stream
    started with: a frame of another size (a resolution change mid-stream) is scaled back to it, as
    ffmpeg does. The conversion every reader uses."""
    rot = round(frame.rotation / 90) % 4 if frame.rotation else 0
    ow, oh = _display_size(*(base_size or (frame.width, frame.height)), short_side)
    if (frame.width, frame.height) != (ow, oh):
        img = frame.to_ndarray(format="rgb24", width=ow, height=oh)  # (oh, ow, 3)
    else:
        img = frame.to_ndarray(format="rgb24")  # (h, w, 3)
    return np.rot90(img, k=rot) if rot else img  # k quarter turns counter-clockwise (a view)


class VideoReader:
    """Frame-accurate random access to a video file.

    Args:
        path: video file (anything FFmpeg demuxes: mp4, mkv, webm, avi, ...).
        short_side: resize on decode so that the shorter output side has this length (aspect kept).
        num_threads: decoder threads (1 is best inside DataLoader workers).

    ``get_frames(indices)`` returns uint8 ``(T, H, W, 3)`` RGB in the requested order (duplicates
    allowed); ``width``/``height`` are those of the returned frames (upright, after resizing).
    """

    def __init__(self, path: str | os.PathLike, *, short_side: int | None = None, num_threads: int = 1):
        self.path = Path(path)
        _check_file(self.path)
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be >= 1, got {short_side}")
        self.short_side = short_side
        self.num_threads = num_threads
        self._container, self._stream = _open_container(self.path)
        self._setup_stream()
        s, ctx = self._stream, self._stream.codec_context
        # stream facts read once (PyAV objects must not be touched after close())
        self._rate = s.average_rate or s.guessed_rate or s.base_rate
        self._stream_seconds = float(s.duration * s.time_base) if s.duration and s.time_base else None
        self._container_seconds = (
            self._container.duration / av.time_base if self._container.duration else None
        )
        self._coded_size = (ctx.width, ctx.height)
        st = self.path.stat()
        self._key = (str(self.path.resolve()), st.st_mtime_ns, st.st_size)
        self._index: _FrameIndex | None = None
        self.frames_decoded = 0  # running count of decoded frames (cost statistic)
        self._closed = False

    def _setup_stream(self) -> None:
        ctx = self._stream.codec_context
        ctx.thread_count = self.num_threads
        ctx.thread_type = "AUTO" if self.num_threads != 1 else "SLICE"

    def _reopen(self) -> None:
        self._container.close()
        self._container, self._stream = _open_container(self.path)
        self._setup_stream()

    # ----------------------------------------------------------------- metadata
    @property
    def index(self) -> _FrameIndex:
        if self._index is None:
            cached = _INDEX_CACHE.get(self._key)
            if cached is None:
                cached = _scan_packets(self.path, self._container, self._stream)  # every span seeks after
                _INDEX_CACHE[self._key] = cached
                while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
                    _INDEX_CACHE.popitem(last=False)
            else:
                _INDEX_CACHE.move_to_end(self._key)
            self._index = cached
        return self._index

    @property
    def num_frames(self) -> int:
        return self.index.num_frames

    @property
    def fps(self) -> float:
        """Average frame rate (frames per second; 30 when the file states none and has no duration)."""
        if self._rate:
            return float(self._rate)
        seconds = self._stream_seconds or self._container_seconds
        return self.num_frames / seconds if seconds else 30.0

    @property
    def duration(self) -> float:
        """Seconds: stream duration, else container duration, else frame count over frame rate."""
        return self._stream_seconds or self._container_seconds or self.num_frames / self.fps

    @property
    def rotation(self) -> int:
        """Display rotation in degrees counter-clockwise (0, 90, 180 or -90), read from the first frame."""
        if self.index.rotation is None:
            self.get_frames([0])
        return self.index.rotation

    @property
    def width(self) -> int:
        return self._out_size()[0]

    @property
    def height(self) -> int:
        return self._out_size()[1]

    def _out_size(self) -> tuple[int, int]:
        w, h = self._coded_size
        return _display_size(*((h, w) if self.rotation % 180 else (w, h)), self.short_side)

    # ----------------------------------------------------------------- decoding
    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """Convert one decoded frame to upright RGB (H, W, 3), resizing on the way if asked."""
        if self.index.rotation is None:
            rot = round(frame.rotation / 90) % 4 if frame.rotation else 0
            self.index.rotation = rot * 90 if rot < 3 else -90
        return frame_to_rgb(frame, self.short_side, self._coded_size if all(self._coded_size) else None)

    def get_frames(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Decode frames ``indices`` (0-based, presentation order) -> uint8 tensor (T, H, W, 3)."""
        if self._closed:
            raise ValueError(f"{self.path}: the reader is closed")
        idx = _checked_indices(self.path, indices, self.num_frames, "video")
        if not idx.size:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        uniq, inverse = np.unique(idx, return_inverse=True)
        present = self.index.present
        if present is not None and uniq[-1] >= present:
            raise VideoDecodeError(
                self.path,
                f"the file is truncated: it declares {self.num_frames} frames but holds only {present}, "
                f"and frame {int(uniq[uniq >= present][0])} is past the end",
                _FIX_FILE,
            )
        if self.index.pts is None:
            frames = self._decode_sequential(uniq)
        else:
            frames = [None] * len(uniq)
            for lo, hi in self._spans(uniq):
                self._decode_span(uniq, lo, hi, frames)
        out = np.stack(frames)  # (U, H, W, 3), one copy
        if len(uniq) != len(idx) or not np.array_equal(uniq, idx):
            out = out[inverse.reshape(-1)]  # back to the requested order, with duplicates
        return torch.from_numpy(out)

    def _spans(self, uniq: np.ndarray) -> list[tuple[int, int]]:
        """Split sorted unique frame indices into [lo, hi) runs that share one seek."""
        key_pos = self.index.key_pos
        kf = key_pos[np.maximum(np.searchsorted(key_pos, uniq, side="right") - 1, 0)]  # (U,) keyframe before
        # seek again only when the keyframe before frame j lies past the last decoded frame + SEEK_COST
        new = np.flatnonzero(kf[1:] > uniq[:-1] + SEEK_COST) + 1
        bounds = [0, *new.tolist(), len(uniq)]
        return list(itertools.pairwise(bounds))

    def _decode_span(self, uniq: np.ndarray, lo: int, hi: int, frames: list) -> None:
        index = self.index
        want = {int(index.pts[uniq[i]]): i for i in range(lo, hi)}
        last_pts = int(index.pts[uniq[hi - 1]])
        k = max(int(np.searchsorted(index.key_pos, uniq[lo], side="right")) - 1, 0)
        # Seek to the keyframe before the span by its pts (what mov/mkv seek on), else by its dts
        # (demuxers that seek on decode time), else the keyframe before it, else reopen at the start.
        key_pts = int(index.pts[index.key_pos[k]])
        tries = (key_pts, int(index.key_seek[k]), int(index.key_seek[max(k - 1, 0)]), None)
        for ts in dict.fromkeys(tries):
            if ts is None:
                self._reopen()
            else:
                self._container.seek(ts, stream=self._stream, backward=True)
            try:
                for frame in self._decode_forward(want):
                    self.frames_decoded += 1
                    slot = want.pop(frame.pts, None)
                    if slot is not None:
                        frames[slot] = self._to_rgb(frame)
                    if not want or (frame.pts is not None and frame.pts >= last_pts):
                        break
            except av.FFmpegError as e:
                raise VideoDecodeError(
                    self.path, f"decoding failed near frame {uniq[lo]} ({e})", _FIX_FILE
                ) from e
            finally:
                self._stream.codec_context.skip_frame = "DEFAULT"
            if not want:
                return
        missing = np.searchsorted(index.pts, sorted(want)).tolist()
        raise VideoDecodeError(
            self.path, f"frames {missing[:5]} could not be decoded (truncated or corrupt file?)", _FIX_FILE
        )

    def _decode_forward(self, want: dict) -> Iterator[av.VideoFrame]:
        """Decode from the current position until the packets of all ``want`` timestamps are in.

        A frame that is not wanted and that no other frame references (H.264/HEVC non-reference
        B-frames, ...) is discarded by the decoder unparsed; the others decode exactly as before.
        Once the last wanted packet is sent the decoder is drained instead of fed further packets
        (a B-frame decoder holds frames back for reordering). The next span seeks, which resets it.
        """
        ctx = self._stream.codec_context
        pending = set(want)
        for packet in self._container.demux(self._stream):
            wanted = packet.pts is None or packet.pts in pending
            ctx.skip_frame = "DEFAULT" if wanted else "NONREF"
            yield from ctx.decode(packet)  # a size-0 packet at the end of the file drains too
            pending.discard(packet.pts)
            if not pending:
                ctx.skip_frame = "DEFAULT"
                yield from ctx.decode(None)
                return

    def _decode_sequential(self, uniq: np.ndarray) -> list[np.ndarray]:
        """Fallback without timestamps: decode from the start, numbering frames as they come."""
        self._reopen()
        frames, j = [], 0
        try:
            for i, frame in enumerate(self._container.decode(self._stream)):
                if j == len(uniq):
                    break
                self.frames_decoded += 1
                if i == uniq[j]:
                    frames.append(self._to_rgb(frame))
                    j += 1
        except av.FFmpegError as e:
            raise VideoDecodeError(self.path, f"decoding failed ({e})", _FIX_FILE) from e
        if j != len(uniq):
            raise VideoDecodeError(self.path, f"frame {uniq[j]} could not be decoded", _FIX_FILE)
        return frames

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        self._closed = True
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r}, num_frames={self.num_frames}, fps={self.fps:.3g})"


# --------------------------------------------------------------------------- frame folders
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[A-Za-z]+)$")


def _detect_template(folder: Path, names: list[str]) -> tuple[str, list[int]]:
    """Find the most common ``prefix{number}ext`` pattern among image file names."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        m = _NUMBERED.match(name)
        if m and m.group(3).lower() in _IMAGE_EXTS:
            groups.setdefault((m.group(1), m.group(3)), []).append(m.group(2))
    if not groups:
        raise VideoDecodeError(
            folder, "no numbered image files (like img_00001.jpg) in the folder", "Pass template= explicitly"
        )
    (prefix, ext), digits = max(groups.items(), key=lambda kv: len(kv[1]))
    widths = {len(d) for d in digits}
    padded = len(widths) == 1 and any(d.startswith("0") for d in digits)
    num = f"{{:0{widths.pop()}d}}" if padded else "{:d}"
    return prefix.replace("{", "{{").replace("}", "}}") + num + ext, sorted(int(d) for d in digits)


class FrameFolderReader:
    """Folder of per-frame images (``img_00001.jpg``, ...) with the ``VideoReader`` interface.

    Args:
        path: the folder.
        template: file name pattern for ``str.format(number)``, e.g. ``"img_{:05d}.jpg"``;
            auto-detected from the files when None.
        start_index: number of the first frame file (1 for SSv1/mmaction rawframes); None: the
            smallest number in the folder (1 with an explicit ``template``).
        fps: frame rate to report (folders carry none).
        short_side: resize so that the shorter side has this length.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        template: str | None = None,
        start_index: int | None = None,
        fps: float = 30.0,
        short_side: int | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_dir():
            cause = "folder does not exist" if not self.path.exists() else "is not a folder"
            raise VideoDecodeError(self.path, cause, "Check the path and the dataset root")
        names = os.listdir(self.path)
        present = set(names)
        if template is None:
            template, numbers = _detect_template(self.path, names)
            start_index = numbers[0] if start_index is None else start_index
        elif start_index is None:
            start_index = 1
        self.template, self.start_index, self.short_side = template, start_index, short_side
        self._fps = float(fps)
        n = 0
        while template.format(start_index + n) in present:
            n += 1
        if n == 0:
            raise VideoDecodeError(
                self.path,
                f"no frame file {template.format(start_index)!r} (template {template!r})",
                "Check template= and start_index=",
            )
        self._num_frames = n
        self._size: tuple[int, int] | None = None

    def frame_path(self, i: int) -> Path:
        return self.path / self.template.format(self.start_index + i)

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def duration(self) -> float:
        return self._num_frames / self._fps

    @property
    def width(self) -> int:
        return self._out_size()[0]

    @property
    def height(self) -> int:
        return self._out_size()[1]

    def _out_size(self) -> tuple[int, int]:
        if self._size is None:
            from PIL import Image  # pillow ships with matplotlib, a core dependency

            with Image.open(self.frame_path(0)) as im:
                self._size = _display_size(*im.size, self.short_side)
        return self._size

    def _read(self, i: int) -> np.ndarray:
        from PIL import Image

        p = self.frame_path(i)
        try:
            with Image.open(p) as im:
                size = _display_size(*im.size, self.short_side)
                if self.short_side is not None:
                    im.draft("RGB", size)  # JPEG: decode at a reduced scale when possible
                im = im.convert("RGB")
                if im.size != size:
                    im = im.resize(size, Image.BILINEAR)
                return np.asarray(im)
        except (OSError, ValueError) as e:
            raise VideoDecodeError(p, f"cannot read frame image ({e})", "Re-extract the frames") from e

    def get_frames(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        idx = _checked_indices(self.path, indices, self._num_frames, "folder")
        if not idx.size:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.stack([self._read(int(i)) for i in uniq])  # (U, H, W, 3)
        return torch.from_numpy(out[inverse.reshape(-1)])

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __len__(self) -> int:
        return self._num_frames

    def __repr__(self) -> str:
        return f"FrameFolderReader({str(self.path)!r}, num_frames={self._num_frames}, template={self.template!r})"


def open_video(path: str | os.PathLike, **kwargs) -> VideoReader | FrameFolderReader:
    """``VideoReader`` for a file, ``FrameFolderReader`` for a folder of frames.

    Keyword arguments that only one reader takes are dropped for the other (e.g. ``num_threads``).
    """
    if Path(path).is_dir():
        kwargs.pop("num_threads", None)
        return FrameFolderReader(path, **kwargs)
    for k in ("template", "start_index", "fps"):
        kwargs.pop(k, None)
    return VideoReader(path, **kwargs)


# --------------------------------------------------------------------------- writing
class VideoWriter:
    """Encode uint8 RGB ``(H, W, 3)`` (or grey ``(H, W)``) frames one at a time; the frame size is
    taken from the first frame. Use as a context manager (or call :meth:`close`) so the encoder is
    flushed and the file finalised.

    ``gop`` is the keyframe interval, ``crf``/``preset`` the usual x264 knobs, ``options`` any other
    encoder options; ``rotation`` (degrees ccw) stores a display matrix, as phones do. Odd sizes
    with 4:2:0 / 4:2:2 chroma get their last row / column repeated (H.264 needs even). One encoder
    thread by default, for reproducible output (for byte-identical x264 files also pass
    ``options={"x264-params": "mbtree=0"}``, as the synthetic datasets do).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float = 30.0,
        *,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        gop: int | None = None,
        crf: int | None = None,
        preset: str | None = None,
        options: dict[str, str] | None = None,
        rotation: int = 0,
        threads: int = 1,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rate = Fraction(fps).limit_denominator(1001 * 1000)
        self._opts = dict(options or {})
        if crf is not None:
            self._opts["crf"] = str(crf)
        if preset is not None:
            self._opts["preset"] = preset
        self._codec, self._pix_fmt, self._gop, self._rotation, self._threads = (
            codec,
            pix_fmt,
            gop,
            rotation,
            threads,
        )
        self._container = av.open(str(self.path), "w")
        self._stream = None
        self.frames_written = 0

    def _open_stream(self, h: int, w: int) -> None:
        stream = self._container.add_stream(self._codec, rate=self._rate, options=self._opts)
        stream.height, stream.width = h, w
        stream.pix_fmt = self._pix_fmt
        stream.codec_context.thread_count = self._threads
        if self._gop is not None:
            stream.codec_context.gop_size = self._gop
        if self._rotation:
            stream.set_display_rotation(self._rotation)
        self._stream = stream

    def write(self, frame: np.ndarray | torch.Tensor) -> None:
        arr = frame.numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise ValueError(f"a frame must be uint8 (H, W, 3) or (H, W), got {arr.dtype} {arr.shape}")
        # 4:2:0 / 4:2:2 chroma needs even sizes: repeat the last row / column instead of failing
        pad_h = arr.shape[0] % 2 if "420" in self._pix_fmt else 0
        pad_w = arr.shape[1] % 2 if ("420" in self._pix_fmt or "422" in self._pix_fmt) else 0
        if pad_h or pad_w:
            arr = np.pad(arr, [(0, pad_h), (0, pad_w)] + [(0, 0)] * (arr.ndim - 2), mode="edge")
        if self._stream is None:
            self._open_stream(arr.shape[0], arr.shape[1])
        fmt = "rgb24" if arr.ndim == 3 else "gray"
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt)
        out.pts = self.frames_written
        out.time_base = 1 / self._rate
        self._container.mux(self._stream.encode(out))
        self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode())
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(
    path: str | os.PathLike, frames: np.ndarray | torch.Tensor, fps: float = 30.0, **writer_options
) -> Path:
    """Encode uint8 frames ``(T, H, W, 3)`` RGB (or ``(T, H, W)`` grey) into a video file with a
    :class:`VideoWriter`; ``writer_options`` are its keyword arguments (``codec``, ``pix_fmt``,
    ``gop``, ``crf``, ``preset``, ``options``, ``rotation``, ``threads``)."""
    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3):
        raise ValueError(f"frames must be uint8 (T, H, W, 3) or (T, H, W), got {arr.dtype} {arr.shape}")
    with VideoWriter(path, fps, **writer_options) as writer:
        for t in range(arr.shape[0]):
            writer.write(arr[t])
    return Path(path)
