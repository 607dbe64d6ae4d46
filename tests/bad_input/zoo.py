"""A zoo of damaged and unusual inputs, and the harness that feeds them to every ``kinetix`` command.

:func:`build_workspace` writes real files: H.264 videos (PyAV), a synthetic dataset, a trained
checkpoint of a tiny model, weights files, detection weights, then one damaged variant per *kind*
(truncated, random bytes, YAML bombs, malicious pickles, NaN weights ...). :func:`cases` pairs
each kind with the commands that read it and what must happen:

* ``"error"``: exit code != 0, a stderr line that starts with ``kinetix`` and names the input;
* ``"skip"``: exit code 0, the bad input named in a ``kinetix ...: warning`` line and counted
  (``skipped``) in the summary the command prints;
* ``"ok"``: an unusual but valid input (resolution change, one frame, odd names): exit code 0.

For every case :func:`run_case` also checks: no Python traceback in stderr, no internal error, no
file outside the case's output folder created/changed/removed, and nothing runs past a timeout.
Commands run in-process through ``kinetix.cli.main.main`` (cheap); ``tests/bad_input`` adds a few
real subprocesses. ``python tests/bad_input/zoo.py`` runs the whole zoo and prints the totals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "engine"))
import tiny  # noqa: E402  (registers engine_tiny, builds the mp4 dataset)

from kinetix.cli.main import main  # noqa: E402
from kinetix.config import Config, config_to_dict  # noqa: E402
from kinetix.data.io import write_video  # noqa: E402
from kinetix.models import create_model, save_model_weights  # noqa: E402

TIMEOUT_S = 120


# ----------------------------------------------------------------------------- file makers
def _frames(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (1, h, w, 3))
    t = np.arange(n)[:, None, None, None]
    return ((base + 3 * t) % 256).astype(np.uint8)  # (T, H, W, 3): every frame differs


def _mp4(path: Path, n: int = 40, size: int = 32, faststart: bool = True) -> Path:
    """H.264 mp4; ``faststart`` puts the index (moov) at the front, as web videos do."""
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("libx264", rate=10, options={"x264-params": "mbtree=0"})
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.codec_context.thread_count = 1
        for f in _frames(n, size, size):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return path


def _resolution_change(path: Path) -> Path:
    a = write_video(path.with_suffix(".a.ts"), _frames(12, 32, 48), 10, gop=4)
    b = write_video(path.with_suffix(".b.ts"), _frames(12, 48, 32, seed=1), 10, gop=4)
    path.write_bytes(a.read_bytes() + b.read_bytes())
    a.unlink()
    b.unlink()
    return path


class _Evil:
    """Pickles to a call of os.system: loading it with plain torch.load would run a command."""

    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _random(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ----------------------------------------------------------------------------- workspace
@dataclasses.dataclass
class Workspace:
    root: Path  # everything the cases read lives under root/inputs; outputs under root/out
    inputs: Path
    out: Path
    data: Path  # synthetic mp4 dataset (train.txt / val.txt / classes.txt)
    good: Path  # a good video
    config: Path  # a good config (engine_tiny on data)
    ckpt: Path  # a complete checkpoint folder of a trained run
    weights: Path  # test_tsm weights (safetensors, plain)
    det_weights: Path  # test_evad detection weights with config + class names
    online_weights: Path  # test_tsm_online weights (stream)
    bad: dict  # kind -> path


def _config_text(ws_data: Path, out_dir: Path, **sections) -> str:
    return tiny.config_text(ws_data, out_dir, **sections)


def build_workspace(root: Path) -> Workspace:
    inputs, out = root / "inputs", root / "out"
    inputs.mkdir(parents=True)
    out.mkdir()
    data = inputs / "data"
    tiny.make_mp4_dataset(data)
    good = _mp4(inputs / "good.mp4")
    config = _write(inputs / "good.yaml", _config_text(data, out / "_setup"))
    # one trained epoch of the tiny model: a real checkpoint folder (resume, test, predict)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["train", str(config), "--set", "train.epochs=1"])
    assert rc == 0, "workspace: the tiny training run failed"
    run_dir = out / "_setup" / "tiny"
    ckpt = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    kept = inputs / "run" / "checkpoints" / ckpt.name
    kept.parent.mkdir(parents=True)
    os.replace(ckpt, kept)
    ckpt = kept
    weights = save_model_weights(create_model("test_tsm"), inputs / "tsm.safetensors")
    det_cfg = Config(task="detection")
    det_cfg.model.name = "test_evad"
    det_weights = save_model_weights(
        create_model("test_evad", num_classes=3),
        inputs / "evad.safetensors",
        {"config": config_to_dict(det_cfg), "class_names": ["a", "b", "c"]},
    )
    online = save_model_weights(create_model("test_tsm_online"), inputs / "online.safetensors")
    ws = Workspace(root, inputs, out, data, good, config, ckpt, weights, det_weights, online, {})
    ws.bad = _make_bad(ws)
    return ws


def _copy_ckpt(ws: Workspace, name: str) -> Path:
    dst = ws.inputs / "ckpts" / name / "checkpoints" / ws.ckpt.name
    dst.mkdir(parents=True)
    for f in ws.ckpt.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _make_bad(ws: Workspace) -> dict[str, Path]:
    b, inp, data = {}, ws.inputs, ws.data
    v = inp / "videos"
    v.mkdir()
    full = _mp4(v / "_full.mp4", 90)
    raw = full.read_bytes()
    late = _mp4(v / "_late.mp4", 90, faststart=False).read_bytes()
    # --- videos
    b["video/empty"] = _write(v / "empty.mp4", b"")
    b["video/random-bytes"] = _write(v / "random.mp4", _random(5000, 1))
    b["video/text"] = _write(v / "notes.mp4", "this is not a video\n" * 40)
    b["video/truncated-tail"] = _write(v / "cut_tail.mp4", raw[: int(len(raw) * 0.4)])
    b["video/truncated-index-lost"] = _write(v / "cut_moov.mp4", late[: int(len(late) * 0.6)])
    b["video/header-only"] = _write(v / "header.mp4", raw[:1500])
    b["video/audio-only"] = _audio_only(v / "audio.mp4")
    b["video/folder"] = v / "folder.mp4"
    b["video/folder"].mkdir()
    b["video/missing"] = v / "missing.mp4"
    b["video/device"] = v / "zero.mp4"
    os.symlink("/dev/zero", b["video/device"])
    b["video/fifo"] = v / "pipe.mp4"
    os.mkfifo(b["video/fifo"])
    b["video/resolution-change"] = _resolution_change(v / "res_change.ts")
    b["video/one-frame"] = _mp4(v / "one_frame.mp4", 1)
    b["video/odd-name"] = _mp4(v / "clip with spaces é #1.mp4", 20)
    b["video/annotation-instead"] = data / "train.txt"
    # --- annotation files (beside the dataset's videos)
    good_rows = (data / "val.txt").read_text().splitlines()
    first = good_rows[0].rsplit(None, 1)[0]
    b["ann/header-only"] = _write(data / "header_only.csv", "label,youtube_id,time_start,time_end,split\n")
    b["ann/empty"] = _write(data / "empty.txt", "")
    b["ann/random-bytes"] = _write(data / "random.txt", _random(3000, 2))
    b["ann/huge-label"] = _write(data / "huge_label.txt", f"{first} 0\n{first} 40000000000\n")
    b["ann/negative-label"] = _write(data / "negative.txt", f"{first} 0\n{first} -3\n")
    b["ann/no-label"] = _write(data / "no_label.txt", f"{first} 0\n{first}\n")
    b["ann/label-not-a-number"] = _write(data / "word_label.txt", f"{first} 0\n{first} zero\n")
    b["ann/unknown-class"] = _write(
        data / "unknown_class.csv",
        "label,youtube_id,time_start,time_end,split\nno such class,abc,0,1,val\n",
    )
    b["ann/all-missing"] = _write(
        data / "all_missing.txt", "".join(f"gone{i}.mp4 {i % 3}\n" for i in range(6))
    )
    b["ann/one-bad-video"] = _write(
        data / "one_bad.txt", "\n".join(good_rows) + f"\n{os.path.relpath(v / 'random.mp4', data)} 0\n"
    )
    for vk in ("truncated-tail", "empty", "text", "audio-only", "header-only", "folder", "missing"):
        bad_video = b[f"video/{vk}"]  # a dataset whose one bad video is skipped and counted
        b[f"ann/one-{vk}"] = _write(
            data / f"one_{vk}.txt", "\n".join(good_rows) + f"\n{os.path.relpath(bad_video, data)} 0\n"
        )
    b["ann/duplicates"] = _write(data / "dups.txt", "\n".join(good_rows + good_rows[:2]) + "\n")
    b["ann/outside-root"] = _write(data / "outside.txt", "\n".join(good_rows) + "\n../good.mp4 1\n")
    b["ann/bad-json"] = _write(data / "bad.json", '[{"id": "1", "template": ')
    b["ann/folder"] = data / "a_folder.txt"
    b["ann/folder"].mkdir()
    # --- configs
    c = inp / "configs"
    base = yaml.safe_load(ws.config.read_text())

    def cfg(name: str, change=None, text: str | None = None) -> Path:
        if text is None:
            d = json.loads(json.dumps(base))
            if change:
                change(d)
            text = yaml.safe_dump(d, sort_keys=False)
        return _write(c / f"{name}.yaml", text)

    levels = "abcdefgh"  # billion laughs: 9**8 = 43 million strings once the aliases are expanded
    bomb = f"{levels[0]}: &{levels[0]} [{', '.join(['lol'] * 9)}]\n" + "".join(
        f"{k}: &{k} [{', '.join(['*' + p] * 9)}]\n" for p, k in itertools.pairwise(levels)
    )
    nested = "extra:\n" + "".join("  " + line + "\n" for line in bomb.splitlines())
    good_text = ws.config.read_text()
    b["config/yaml-bomb-top"] = cfg("bomb_top", text=good_text + bomb)
    b["config/yaml-bomb-extra"] = cfg("bomb_extra", text=good_text + nested)
    b["config/yaml-bomb-kwargs"] = cfg(
        "bomb_kwargs",
        text=good_text.replace(
            "model:\n  name: engine_tiny\n",
            "model:\n  name: engine_tiny\n  kwargs:\n    x: &x [1, 2]\n    y: [*x, *x]\n",
        ),
    )
    b["config/no-model"] = cfg("no_model", lambda d: d.pop("model"))
    b["config/epochs-negative"] = cfg("epochs_neg", lambda d: d["train"].update(epochs=-3))
    b["config/batch-size-zero"] = cfg("batch0", lambda d: d["data"].update(batch_size=0))
    b["config/lr-nan"] = cfg("lr_nan", text=good_text.replace("lr: 0.05", "lr: .nan"))
    b["config/lr-inf"] = cfg("lr_inf", text=good_text.replace("lr: 0.05", "lr: -.inf"))
    b["config/precision-unknown"] = cfg("precision", lambda d: d["train"].update(precision="fp8"))
    b["config/model-kwarg-unknown"] = cfg("kwarg", lambda d: d["model"].update(kwargs={"wdith": 4}))
    b["config/model-unknown"] = cfg("model_unknown", lambda d: d["model"].update(name="tsm_r5O"))
    b["config/non-utf8"] = cfg(
        "latin1", text=good_text.replace("name: tiny", "name: caf\xe9").encode("latin-1")
    )
    b["config/output-dir-is-file"] = cfg("outdir_file", lambda d: d["train"].update(output_dir=str(ws.good)))
    b["config/max-bad-fraction-above-1"] = cfg("maxbad", lambda d: d["data"].update(max_bad_fraction=1.5))
    b["config/empty"] = cfg("empty", text="")
    b["config/a-list"] = cfg("a_list", text="- model\n- data\n")
    b["config/binary"] = cfg("binary", text=_random(2000, 3))
    b["config/unknown-section"] = cfg("unknown_section", text=good_text + "optimizer:\n  lr: 0.1\n")
    b["config/wrong-type"] = cfg("wrong_type", lambda d: d["train"].update(epochs="ten"))
    b["config/devices-without-gpu"] = cfg("devices", lambda d: d["train"].update(devices=8))
    b["config/views-zero"] = cfg("views0", lambda d: d["eval"].update(views=[0, 3]))
    b["config/annotation-missing"] = cfg(
        "ann_missing", lambda d: d["data"].update(root=str(data), train_ann=f"{data}/nope.txt", val_ann=None)
    )
    b["config/task-unknown"] = cfg("task", lambda d: d.update(task="segmentation"))
    b["config/folder"] = c / "folder.yaml"
    b["config/folder"].mkdir()
    b["config/missing"] = c / "missing.yaml"
    # --- checkpoints and weights
    w = inp / "weights"
    b["ckpt/missing"] = w / "missing"
    b["ckpt/empty-folder"] = w / "empty_folder"
    b["ckpt/empty-folder"].mkdir(parents=True)
    t = _copy_ckpt(ws, "truncated")
    (t / "model.safetensors").write_bytes((t / "model.safetensors").read_bytes()[:300])
    b["ckpt/truncated-weights"] = t
    t = _copy_ckpt(ws, "manifest")
    (t / "manifest.json").write_text('{"epoch": 1, "config": {')
    b["ckpt/corrupt-manifest"] = t
    t = _copy_ckpt(ws, "state_random")
    (t / "training_state.pt").write_bytes(_random(4000, 4))
    b["ckpt/state-random-bytes"] = t
    t = _copy_ckpt(ws, "state_evil")
    torch.save({"epoch": 0, "x": _Evil()}, t / "training_state.pt")
    b["ckpt/state-malicious-pickle"] = t
    t = _copy_ckpt(ws, "state_cut")
    (t / "training_state.pt").write_bytes((t / "training_state.pt").read_bytes()[:1000])
    b["ckpt/state-truncated"] = t
    t = _copy_ckpt(ws, "wrong_shape")
    tiny_wide = create_model("engine_tiny", width=12)
    save_model_weights(tiny_wide, t / "model.safetensors")
    b["ckpt/wrong-shape"] = t
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Evil()}, _write(w / "evil.pth", b""))
    b["weights/malicious-pickle"] = w / "evil.pth"
    b["weights/random-bytes"] = _write(w / "random.pth", _random(3000, 5))
    torch.save(create_model("test_tsm").state_dict(), w / "_full.pth")
    b["weights/truncated-zip"] = _write(w / "cut.pth", (w / "_full.pth").read_bytes()[:20000])
    (w / "_full.pth").unlink()
    b["weights/empty"] = _write(w / "empty.safetensors", b"")
    b["weights/truncated-safetensors"] = _write(w / "cut.safetensors", ws.weights.read_bytes()[:500])
    b["weights/metadata-not-json"] = save_model_weights(
        create_model("test_tsm"), w / "meta.safetensors", {"config": "{not json", "class_names": "[oops"}
    )
    nan = create_model("test_tsm")
    with torch.no_grad():
        next(nan.parameters()).fill_(float("nan"))
    b["weights/nan"] = save_model_weights(nan, w / "nan.safetensors")
    part = {
        k: v
        for k, v in create_model("test_evad", num_classes=3).state_dict().items()
        if k.startswith("blocks.")
    }
    torch.save({"model_state": part}, _write(w / "evad_backbone.pyth", b""))
    b["weights/partial"] = w / "evad_backbone.pyth"
    b["weights/other-model"] = ws.weights  # test_tsm weights where test_evad / engine_tiny is expected
    return b


# ----------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    id: str  # "command:kind"
    argv: list[str]
    expect: str  # "error" | "skip" | "ok"
    names: tuple[str, ...]  # what the message must name (any of these)
    slow: bool = False

    @property
    def kind(self) -> str:
        return self.id.split(":", 1)[1]


def cases(ws: Workspace) -> list[Case]:
    b, out = ws.bad, ws.out
    found: list[Case] = []

    def add(cmd: str, kind: str, argv: list, expect: str = "error", name=None, slow: bool = False):
        target = b.get(kind)
        names = name if isinstance(name, tuple) else (name or (target.name if target is not None else kind),)
        found.append(Case(f"{cmd}:{kind}", [str(a) for a in argv], expect, names, slow))

    def o(cid: str) -> Path:
        return out / cid.replace(":", "_").replace("/", "_")

    ok_videos = {"video/resolution-change", "video/one-frame", "video/odd-name"}
    for kind in [k for k in b if k.startswith("video/")]:
        expect = "ok" if kind in ok_videos else "error"
        add("predict", kind, ["predict", b[kind], "--model", "test_tsm", "--checkpoint", ws.weights], expect)
        if kind in ("video/truncated-tail", "video/random-bytes", "video/resolution-change", "video/fifo",
                    "video/missing", "video/audio-only"):  # fmt: skip
            add("detect", kind, ["detect", b[kind], "--checkpoint", ws.det_weights, "--csv",
                                 o(f"detect:{kind}") / "d.csv"], expect, slow=kind != "video/truncated-tail")  # fmt: skip
        if kind not in ok_videos and kind != "video/annotation-instead":
            add("data check", kind, ["data", "check", b[kind]], "error")
        fast = kind in ("video/truncated-tail", "video/random-bytes", "video/resolution-change")
        add(
            "explain",
            kind,
            [
                "explain",
                b[kind],
                "--model",
                "test_tsm",
                "--checkpoint",
                ws.weights,
                "--out",
                o(f"explain:{kind}"),
            ],
            expect,
            slow=not fast,
        )
        if kind not in ("video/fifo", "video/device"):  # a live source may be a pipe or a device
            add(
                "stream",
                kind,
                [
                    "stream",
                    b[kind],
                    "--model",
                    "test_tsm_online",
                    "--checkpoint",
                    ws.online_weights,
                    "--quiet",
                    "--max-frames",
                    "60",  # past the truncation point (37 frames) of cut_tail.mp4
                    "--timeout",
                    "20",
                ],
                expect,
                slow=kind not in ("video/random-bytes", "video/one-frame"),
            )
    # predict: several files, one bad -> the good ones are predicted, the bad one reported
    add("predict", "video/one-bad-of-three",
        ["predict", ws.good, b["video/random-bytes"], b["video/one-frame"], "--model", "test_tsm",
         "--checkpoint", ws.weights], "error", name="random.mp4")  # fmt: skip
    for kind in [k for k in b if k.startswith("ann/")]:
        expect = "ok" if kind in ("ann/duplicates", "ann/outside-root") else "error"
        add("data check", kind, ["data", "check", b[kind]], expect)
        if kind in ("ann/duplicates", "ann/outside-root"):
            continue
        skip = kind.startswith("ann/one-")
        t_expect = "skip" if skip else "error"
        video = b[f"video/{kind[8:]}"].name if skip and kind != "ann/one-bad-video" else "random.mp4"
        names = (video,) if skip else (b[kind].name,)
        sets = [f"data.test_ann={b[kind]}", "data.max_bad_fraction=0.5"]
        add("test", kind, ["test", ws.config, "--checkpoint", ws.ckpt, "--out", o(f"test:{kind}"), "--set", *sets],
            t_expect, name=names, slow=kind not in ("ann/header-only", "ann/one-bad-video", "ann/one-truncated-tail"))  # fmt: skip
        add("train", kind, ["train", ws.config, "--set", f"data.train_ann={b[kind]}", "train.epochs=1",
                            f"train.output_dir={o(f'train:{kind}')}", "data.max_bad_fraction=0.5"],
            t_expect, name=names, slow=kind not in ("ann/huge-label", "ann/one-bad-video"))  # fmt: skip
    for kind in [k for k in b if k.startswith("config/")]:
        argv = ["train", b[kind], "--set", f"train.output_dir={o('train:' + kind)}"]
        if kind == "config/output-dir-is-file":
            argv = argv[:2]
        expect = "error"
        add("train", kind, argv, expect, name=(b[kind].name, "good.mp4"))
        # test uses neither train.output_dir nor train.devices: those configs are fine for it
        t_ok = kind in ("config/output-dir-is-file", "config/devices-without-gpu")
        add("test", kind, ["test", b[kind], "--checkpoint", ws.ckpt, "--out", o(f"test:{kind}")],
            "ok" if t_ok else "error", name=(b[kind].name,), slow=True)  # fmt: skip
    # resume: the run's own config is used; another config file is refused with every difference
    add("train --resume", "config-differs", ["train", ws.config, "--resume", ws.ckpt], name="good.yaml")
    standalone = ws.inputs / "standalone" / ws.ckpt.name  # a checkpoint folder copied on its own
    if not standalone.exists():
        standalone.parent.mkdir(parents=True)
        standalone.mkdir()
        for f in ws.ckpt.iterdir():
            (standalone / f.name).write_bytes(f.read_bytes())
    add("train --resume", "standalone-checkpoint", ["train", "--resume", standalone, "--set", "train.epochs=2",
        f"train.output_dir={o('resume:standalone')}"], "ok", slow=True)  # fmt: skip
    add(
        "test",
        "out-is-a-file",
        ["test", ws.config, "--checkpoint", ws.ckpt, "--out", ws.good],
        name="good.mp4",
    )
    for kind in [k for k in b if k.startswith("ckpt/")]:
        name = (str(b[kind].name), b[kind].parent.parent.name)
        add("train --resume", kind, ["train", "--resume", b[kind], "--set",
                                     f"train.output_dir={o('resume:' + kind)}"], name=name)  # fmt: skip
        # evaluation and prediction read the weights, not the training state (nor, for predict,
        # the manifest): a checkpoint damaged only there still evaluates correctly
        weights_ok = kind.startswith("ckpt/state-")
        add("test", kind, ["test", ws.config, "--checkpoint", b[kind], "--out", o(f"test:{kind}")],
            "ok" if weights_ok else "error", name=name,
            slow=kind not in ("ckpt/corrupt-manifest", "ckpt/truncated-weights"))  # fmt: skip
        add("predict", kind, ["predict", ws.good, "--checkpoint", b[kind]],
            "ok" if weights_ok or kind == "ckpt/corrupt-manifest" else "error", name=name, slow=True)  # fmt: skip
    for kind in [k for k in b if k.startswith("weights/")]:
        model = "test_evad" if kind in ("weights/partial", "weights/other-model") else "test_tsm"
        add("convert", kind, ["convert", "--model", model, "--src", b[kind], "--out",
                              o(f"convert:{kind}") / "w.safetensors"],
            "ok" if kind == "weights/metadata-not-json" else "error")  # fmt: skip
        add("predict", kind, ["predict", ws.good, "--model", "test_tsm", "--checkpoint", b[kind]],
            "ok" if kind == "weights/other-model" else "error",  # (they are test_tsm weights)
            slow=kind not in ("weights/nan", "weights/malicious-pickle"))  # fmt: skip
        add(
            "detect",
            kind,
            ["detect", ws.good, "--checkpoint", b[kind], "--csv", o(f"detect:{kind}") / "d.csv"],
            slow=True,
        )
        add("test", kind, ["test", ws.config, "--checkpoint", b[kind], "--out", o(f"test:{kind}")], slow=True)
    for kind in ("weights/nan", "weights/malicious-pickle", "weights/truncated-safetensors", "weights/empty"):
        slow = kind != "weights/malicious-pickle"
        add(
            "export",
            kind,
            ["export", "test_tsm", "--checkpoint", b[kind], "--out", o(f"export:{kind}") / "m.onnx"],
            slow=slow,
        )
        add(
            "explain",
            kind,
            [
                "explain",
                ws.good,
                "--model",
                "test_tsm",
                "--checkpoint",
                b[kind],
                "--out",
                o(f"explain:{kind}"),
            ],
            slow=slow,
        )
        add(
            "stream",
            kind,
            ["stream", ws.good, "--model", "test_tsm_online", "--checkpoint", b[kind], "--quiet"],
            slow=slow,
        )
    add("export", "out-under-a-file", ["export", "test_tsm", "--out", ws.good / "m.onnx"], name="good.mp4")
    add("convert", "out-is-a-file", ["convert", "--model", "test_tsm", "--src", ws.weights, "--out",
                                     ws.good.with_suffix(".safetensors")], name="good.safetensors")  # fmt: skip
    _write(ws.good.with_suffix(".safetensors"), b"keep me")
    add("convert", "out-under-a-file", ["convert", "--model", "test_tsm", "--src", ws.weights, "--out",
                                        ws.good / "w.safetensors"], name="good.mp4")  # fmt: skip
    add(
        "data synth",
        "num-videos-0",
        ["data", "synth", "--out", o("synth:0"), "--num-videos", "0"],
        name="--num-videos",
    )
    add("data synth", "out-is-a-file", ["data", "synth", "--out", ws.good], name="good.mp4")
    add(
        "data synth",
        "size-too-small",
        ["data", "synth", "--out", o("synth:size"), "--size", "4"],
        name="synth",
    )
    add("flops", "unknown-kwarg", ["flops", "test_tsm", "--set", "wdith=3"], name="wdith")
    add("flops", "unknown-model", ["flops", "tsm_r5O"], name="tsm_r5O")
    add("flops", "frames-zero", ["flops", "test_tsm", "--frames", "0"], name="--frames")
    return found


# ----------------------------------------------------------------------------- running
def snapshot(folder: Path) -> dict[str, tuple]:
    """relative path -> (kind, size, mtime) of everything under ``folder``."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(folder))
            if p.is_symlink() or not p.is_file():
                snap[rel] = ("link" if p.is_symlink() else "dir" if p.is_dir() else "special", 0, "")
            else:  # a write changes the size or the modification time (ns)
                st = p.stat()
                snap[rel] = ("file", st.st_size, st.st_mtime_ns)
    return snap


class CaseTimeout(Exception):
    pass


@dataclasses.dataclass
class Result:
    case: Case
    rc: int
    out: str
    err: str
    seconds: float
    changed: list[str]
    problems: list[str]

    @property
    def outcome(self) -> str:
        return "failed" if self.problems else self.case.expect


def run_case(ws: Workspace, case: Case, timeout: float = TIMEOUT_S) -> Result:
    before = snapshot(ws.inputs)
    cwd = os.getcwd()
    os.chdir(ws.root)  # a stray relative write (pwned.txt, runs/) would land here, outside out/
    stdout, stderr = io.StringIO(), io.StringIO()

    def on_alarm(signum, frame):
        raise CaseTimeout(f"{case.id}: still running after {timeout:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                rc = main(case.argv)
            except SystemExit as e:  # argparse usage errors
                rc = e.code if isinstance(e.code, int) else 2
            except CaseTimeout as e:
                rc = -1
                print(f"TIMEOUT {e}", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
    seconds = time.perf_counter() - t0
    after = snapshot(ws.inputs)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    stray = sorted(p.name for p in ws.root.iterdir() if p.name not in ("inputs", "out"))
    return Result(case, rc, stdout.getvalue(), stderr.getvalue(), seconds, changed + stray,
                  check(case, rc, stdout.getvalue(), stderr.getvalue(), changed + stray))  # fmt: skip


def check(case: Case, rc: int, out: str, err: str, changed: list[str]) -> list[str]:
    """What is wrong with one run (empty: it behaved)."""
    problems = []
    if rc == -1:
        problems.append("hung (timeout)")
    if "Traceback (most recent call last)" in err or "Traceback (most recent call last)" in out:
        problems.append("a Python traceback reached the user")
    if "internal error" in err:
        problems.append("internal error (an uncaught exception)")
    if changed:
        problems.append(f"files outside the output folder changed: {changed[:5]}")
    lines = [ln for ln in err.splitlines() if ln.startswith("kinetix")]
    named = [ln for ln in lines if any(n in ln for n in case.names)]
    if case.expect == "error":
        if rc == 0:
            problems.append("exit code 0 for bad input")
        if not named:
            problems.append(f"no stderr line starting with 'kinetix' naming {case.names}")
    elif case.expect == "skip":
        if rc != 0:
            problems.append(f"exit code {rc}: expected a counted skip")
        if not named:
            problems.append(f"no 'kinetix' warning naming {case.names}")
        if "skipped" not in out + err:
            problems.append("no skipped count in the summary")
    elif rc != 0:
        problems.append(f"exit code {rc} for a valid input")
    return problems


def summary(results: list[Result]) -> dict:
    kinds = {r.case.kind for r in results}
    return {
        "cases": len(results),
        "kinds": len(kinds),
        "commands": len({r.case.id.split(":")[0] for r in results}),
        "clear errors": sum(r.outcome == "error" for r in results),
        "counted skips": sum(r.outcome == "skip" for r in results),
        "handled correctly": sum(r.outcome == "ok" for r in results),
        "failed": sum(r.outcome == "failed" for r in results),
    }


if __name__ == "__main__":  # python tests/bad_input/zoo.py [--fast]: the whole zoo, with totals
    import tempfile

    os.environ.setdefault("MPLBACKEND", "Agg")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ws = build_workspace(Path(tmp))
        todo = [c for c in cases(ws) if not (c.slow and "--fast" in sys.argv)]
        results = []
        for c in todo:
            r = run_case(ws, c)
            results.append(r)
            mark = "FAIL" if r.problems else r.outcome
            print(
                f"{mark:>6} {r.seconds:5.2f}s rc={r.rc} {'slow' if c.slow else 'fast'} {c.id}"
                + (f"  {r.problems}" if r.problems else "")
            )
            if r.problems or "-v" in sys.argv:
                print("        " + r.err.strip().replace("\n", "\n        ")[-1500:])
        print(json.dumps(summary(results), indent=2))
