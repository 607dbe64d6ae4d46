"""``kinetix stream``: a file, a frame folder and a loopback HTTP stream served by the test itself
(127.0.0.1 only), the overlay video, sources that stop mid-stream or cannot be opened, real-time
pacing with frame dropping, Ctrl-C, and per-frame predictions equal to the causal model run offline
on the test views of the whole clip."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from kinetix.cli.main import main as cli_main
from kinetix.data.io import VideoReader, write_video
from kinetix.data.transforms import test_transform
from kinetix.deploy.stream import (
    FramePreprocess,
    OnnxBackend,
    StreamError,
    TorchBackend,
    load_stream_model,
    make_backend,
    open_source,
    run_stream,
)
from kinetix.errors import ConfigError
from kinetix.models import create_model, save_model_weights

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_FRAMES, FPS, H, W = 24, 25.0, 72, 96
MODEL = "test_tsm_mobilenetv2_online"


def _frames(n=NUM_FRAMES, h=H, w=W, seed=0) -> np.ndarray:
    """uint8 (T, H, W, 3): a smooth background and a bright square moving a few pixels per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = ((rng.integers(0, 100, 3)[None, None] + yy[..., None] + 2 * xx[..., None]) % 160).astype(np.uint8)
    out = np.repeat(bg[None], n, 0)
    for t in range(n):  # test data only
        y, x = (3 * t) % (h - 20), (4 * t) % (w - 20)
        out[t, y : y + 20, x : x + 20] = (250, 40 + 8 * t, 200)
    return out


@pytest.fixture(scope="module")
def media(randomize, tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    frames = _frames()
    mp4 = write_video(d / "clip.mp4", frames, fps=FPS, gop=8)
    ts = write_video(d / "clip.ts", frames, fps=FPS, gop=8)  # MPEG-TS: a streamable container
    folder = d / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"img_{i + 1:05d}.png")
    model = create_model(MODEL)
    sample = torch.from_numpy(frames[:8]).permute(3, 0, 1, 2)[None].float() / 255  # (1, 3, 8, H, W)
    randomize(model, torch.nn.functional.interpolate(sample, size=(8, 64, 64)), seed=3)
    ckpt = save_model_weights(model, d / "online.safetensors")
    return {"mp4": mp4, "ts": ts, "folder": folder, "ckpt": ckpt, "dir": d}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path; with ``server.cut`` only that many bytes, then closes
    (a stream that stops mid-way: the header still announces the full length)."""

    def do_GET(self):
        data = self.server.payload
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data[: self.server.cut] if self.server.cut else data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def http_stream(media):
    """A bounded loopback HTTP server: 127.0.0.1, a free port, stopped after the test."""
    servers = []

    def serve(cut_fraction: float | None = None) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.timeout = 5
        server.payload = media["ts"].read_bytes()
        server.cut = int(len(server.payload) * cut_fraction) if cut_fraction else None
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/clip.ts"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


def _run(spec, media, optimize=True, **kw):
    model, settings, names = load_stream_model(media["ckpt"], None)
    backend = TorchBackend(model, optimize=optimize)
    return run_stream(open_source(spec, timeout=5), backend, FramePreprocess(settings), names, **kw)


def _offline_logits(media) -> torch.Tensor:
    """Per-frame logits of the causal model on the whole clip, through the test-view pipeline."""
    _, settings, _ = load_stream_model(media["ckpt"], None)
    model = create_model(MODEL, num_frames=NUM_FRAMES, checkpoint=str(media["ckpt"])).eval()  # one clip of 24
    resize = settings.test_resize or settings.input_size * 256 // 224
    with VideoReader(media["mp4"], short_side=resize) as r:
        frames = r.get_frames(range(r.num_frames))  # (T, H, W, 3)
    t = test_transform(settings.input_size, settings.mean, settings.std, settings.channel_order,
                       settings.value_range, resize=resize)  # fmt: skip
    clip, _ = t(frames)  # (C, T, h, w)
    with torch.no_grad():
        return model.forward_frames(clip[None])[0]  # (T, K)


def test_file_stream_equals_offline_causal_model(media):
    ref = _offline_logits(media)
    assert (ref[1:] - ref[:1]).abs().max() > 1e-2 * ref.abs().max()  # frames give different logits
    report = _run(str(media["mp4"]), media, optimize=False, smooth=3, keep_logits=True)
    assert report.ended == "end" and not report.failed
    got = torch.stack([r.logits for r in report.results])
    assert got.shape == ref.shape
    # float32 convolutions pick other kernels for one frame than for a clip: ~1e-5 relative
    assert (got - ref).abs().max() <= 5e-5 * ref.abs().max()
    # the default backend (BN folded, channels_last) agrees to float32 rounding
    fast = torch.stack([r.logits for r in _run(str(media["mp4"]), media, keep_logits=True).results])
    assert (fast - ref).abs().max() <= 1e-4 * ref.abs().max()
    # smoothed label: argmax of the mean of the last 3 frames' logits
    for i, r in enumerate(report.results):
        mean = ref[max(0, i - 2) : i + 1].mean(0)
        assert r.label == int(mean.argmax())
        assert r.prob == pytest.approx(float(mean.softmax(-1).max()), rel=1e-4)
    s = report.stats
    assert (s.frames_read, s.processed, s.dropped, len(s.latency_ms)) == (
        NUM_FRAMES,
        NUM_FRAMES,
        0,
        NUM_FRAMES,
    )
    assert 0 < s.percentile(50) <= s.percentile(95)


def test_cli_file_with_overlay(media, tmp_path, capsys):
    out = tmp_path / "overlay.mp4"
    rc = cli_main(
        [
            "stream",
            str(media["mp4"]),
            "--checkpoint",
            str(media["ckpt"]),
            "--out",
            str(out),
            "--backend",
            "torch",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.count("fps") == NUM_FRAMES  # one live line per frame (not a tty)
    assert f"{NUM_FRAMES} frames processed, 0 dropped" in text and "p95" in text
    with VideoReader(out) as r:
        assert (r.num_frames, r.height, r.width) == (NUM_FRAMES, H, W)
        drawn = r.get_frames([5])[0].numpy()
    src = _frames()[5]
    assert drawn[:6].mean() > 200 > src[:6].mean()  # the white label band on top
    assert np.abs(drawn[H // 2 :].astype(int) - src[H // 2 :]).mean() < 8  # the picture below it


def test_frame_folder_source(media):
    report = _run(str(media["folder"]), media, keep_logits=True)
    assert report.stats.processed == NUM_FRAMES and report.ended == "end"
    assert report.results[-1].time == pytest.approx((NUM_FRAMES - 1) / 30.0)


def test_http_loopback_stream(media, http_stream, tmp_path, capsys):
    url = http_stream()
    file_report = _run(str(media["ts"]), media, keep_logits=True)
    report = _run(url, media, keep_logits=True)
    assert report.stats.processed == NUM_FRAMES and not report.failed
    assert "ended after 24 frames" in report.ended  # a live source: the server ended the stream
    for a, b in zip(report.results, file_report.results):
        torch.testing.assert_close(a.logits, b.logits)  # same frames, same predictions
    out = tmp_path / "net.mp4"
    rc = cli_main(
        [
            "stream",
            http_stream(),
            "--checkpoint",
            str(media["ckpt"]),
            "--out",
            str(out),
            "--quiet",
            "--backend",
            "torch",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and f"{NUM_FRAMES} frames processed" in text and "frame " not in text
    with VideoReader(out) as r:
        assert r.num_frames == NUM_FRAMES


def test_http_server_closing_early(media, http_stream, capsys):
    url = http_stream(cut_fraction=0.5)
    rc = cli_main(["stream", url, "--checkpoint", str(media["ckpt"]), "--quiet", "--backend", "torch"])
    text = capsys.readouterr().out
    # FFmpeg reports the cut as a read error (rc 1) or, on some builds, as the end of the stream (rc 0)
    assert rc in (0, 1)
    assert text.startswith(f"{url}: the s") and " after " in text.splitlines()[0]
    done = int(text.split(" frames processed")[0].split()[-1])
    assert 0 < done < NUM_FRAMES
    assert "frames/s" in text and "p50" in text


def test_truncated_file_stops_with_a_message(media, tmp_path, capsys):
    data = media["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    # moov is at the end of PyAV mp4s; move it first (faststart) so that a cut file still opens
    fast = tmp_path / "fast.mp4"
    with av.open(str(media["mp4"])) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        for pkt in src.demux(s_in):
            if pkt.dts is not None:
                pkt.stream = s_out
                dst.mux(pkt)
    data = fast.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    rc = cli_main(["stream", str(cut), "--checkpoint", str(media["ckpt"]), "--quiet", "--backend", "torch"])
    text = capsys.readouterr().out
    assert rc == 1, text
    assert "of its 24 frames" in text and "frames processed" in text


def test_unopenable_sources_fail_cleanly(media, tmp_path, capsys):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with socket_free_port() as port:
        cases = {
            str(bad): "cannot open the source",
            str(tmp_path / "missing.mp4"): "no such file",
            f"http://127.0.0.1:{port}/x.ts": "cannot open the source",  # nothing listens there
        }
        for spec, msg in cases.items():
            rc = cli_main(["stream", spec, "--checkpoint", str(media["ckpt"])])
            err = capsys.readouterr().err
            assert rc == 2 and msg in err and "Traceback" not in err, (spec, err)
    with pytest.raises(StreamError, match="camera"):
        open_source("v4l2:/dev/kinetix-no-such-camera")


class _SlowBackend:
    """A backend that takes ``delay`` seconds a frame (a model slower than the source)."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def step(self, frame):
        time.sleep(self.delay)
        return self.inner.step(frame)

    def reset(self):
        self.inner.reset()


def test_realtime_drops_frames_when_the_model_falls_behind(media, tmp_path):
    model, settings, _ = load_stream_model(media["ckpt"], None)
    slow = _SlowBackend(TorchBackend(model), 2.5 / FPS)  # 2.5 frame periods per frame
    out = tmp_path / "rt.mp4"
    t0 = time.perf_counter()
    report = run_stream(
        open_source(str(media["mp4"])), slow, FramePreprocess(settings), realtime=True, out=out
    )
    wall = time.perf_counter() - t0
    s = report.stats
    assert s.frames_read == NUM_FRAMES and s.processed + s.dropped == NUM_FRAMES
    assert NUM_FRAMES // 4 <= s.processed <= NUM_FRAMES // 2 and s.dropped >= NUM_FRAMES // 2
    assert wall < 2 * NUM_FRAMES / FPS  # paced at the source rate, not 2.5x slower
    with VideoReader(out) as r:
        assert r.num_frames == NUM_FRAMES  # dropped frames are written with the last label
    # the same slow model without pacing processes every frame
    fast = run_stream(open_source(str(media["mp4"])), slow, FramePreprocess(settings))
    assert (fast.stats.processed, fast.stats.dropped) == (NUM_FRAMES, 0)


def test_realtime_paces_a_fast_model_at_the_source_rate(media):
    t0 = time.perf_counter()
    report = _run(str(media["mp4"]), media, realtime=True)
    assert report.stats.dropped == 0 or report.stats.dropped <= 2  # a loaded machine may drop one
    assert time.perf_counter() - t0 >= (NUM_FRAMES - 1) / FPS * 0.95


class _InterruptAt:
    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0

    def step(self, frame):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return self.inner.step(frame)

    def reset(self):
        self.inner.reset()


def test_ctrl_c_ends_cleanly_with_the_summary(media, tmp_path):
    model, settings, _ = load_stream_model(media["ckpt"], None)
    out = tmp_path / "part.mp4"
    backend = _InterruptAt(TorchBackend(model), 5)
    report = run_stream(open_source(str(media["mp4"])), backend, FramePreprocess(settings), out=out)
    assert report.ended == "interrupted" and report.stats.processed == 5
    assert "5 frames processed" in report.stats.summary()
    with VideoReader(out) as r:  # the overlay is finalised and playable
        assert r.num_frames == 5


@pytest.mark.parametrize("name", [MODEL, "test_tsm_online", "test_gsm"])
def test_optimized_torch_backend_equals_the_eager_model(randomize, name):
    kw = {"causal": True} if name == "test_gsm" else {}
    clip = torch.randn(1, 3, 8, 64, 64)
    model = randomize(create_model(name, **kw), clip, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain, fast = TorchBackend(model, optimize=False), TorchBackend(model)
    assert (
        not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.stream.model.backbone.modules())
        or name == "test_gsm"
    )
    with torch.inference_mode():
        a = torch.stack([plain.step(clip[:, :, t]) for t in range(8)])
        b = torch.stack([fast.step(clip[:, :, t]) for t in range(8)])
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()  # float32 rounding of the folded weights
    for k, v in model.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_onnxruntime_backend_equals_torch(media):
    pytest.importorskip("onnxruntime")
    model, settings, names = load_stream_model(media["ckpt"], None)
    backend = make_backend("onnxruntime", model, settings.input_size)
    assert isinstance(backend, OnnxBackend)
    ort = run_stream(
        open_source(str(media["mp4"])), backend, FramePreprocess(settings), names, keep_logits=True
    )
    ref = _run(str(media["mp4"]), media, optimize=False, keep_logits=True)
    a = torch.stack([r.logits for r in ort.results])
    b = torch.stack([r.logits for r in ref.results])
    assert a.shape == (NUM_FRAMES, 10) and (a - b).abs().max() <= 1e-4 * b.abs().max()


@pytest.mark.slow
def test_auto_backend_picks_the_faster(media):
    pytest.importorskip("onnxruntime")
    model, settings, _ = load_stream_model(media["ckpt"], None)
    backend = make_backend("auto", model, settings.input_size)
    t = backend.timings
    assert set(t) == {"torch", "onnxruntime"}
    assert backend.name == min(t, key=t.get)


@pytest.mark.slow
def test_cli_onnxruntime_backend(media, capsys):
    pytest.importorskip("onnxruntime")
    rc = cli_main(
        [
            "stream",
            str(media["mp4"]),
            "--checkpoint",
            str(media["ckpt"]),
            "--backend",
            "onnxruntime",
            "--quiet",
        ]
    )
    assert rc == 0 and f"{NUM_FRAMES} frames processed" in capsys.readouterr().out


def test_offline_models_and_unknown_backends_are_refused(media):
    for backend in ("torch", "onnxruntime"):
        with pytest.raises(ConfigError, match="cannot stream"):
            make_backend(backend, create_model("test_tsm_mobilenetv2"))
    with pytest.raises(ConfigError, match="--backend must be one of"):
        make_backend("tensorrt", create_model(MODEL))


class socket_free_port:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        pass


@pytest.mark.slow
def test_sigint_prints_the_summary_without_a_traceback(media):
    """A real Ctrl-C (SIGINT) to ``kinetix stream --realtime`` on a long file."""
    long = write_video(media["dir"] / "long.mp4", np.concatenate([_frames()] * 20), fps=FPS, gop=8)  # ~19 s
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "kinetix", "stream", str(long), "--checkpoint", str(media["ckpt"]),
           "--realtime", "--backend", "torch", "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        first = proc.stdout.readline()  # the first live line: the loop is running
        assert first.startswith("frame"), first + proc.stderr.read()
        time.sleep(1.0)
        assert time.time() < deadline
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in out and "frames processed" in out and "Traceback" not in err
    done = int(out.split(" frames processed")[0].split()[-1])
    assert 0 < done < 20 * NUM_FRAMES
