"""Detection through the engine on a tiny synthetic AVA-format dataset: a few training steps,
frame-mAP evaluation, and `kinetix detect` writing an overlay video and AVA-format predictions."""

import json

import pytest

from kinetix.config import config_from_dict
from kinetix.detection import ava


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from kinetix.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth_det")
    generate("detection", out, num_videos=3, size=(64, 96), fps=8.0, seconds=3.0, val_fraction=0.34)
    return out


def _cfg(synth, tmp_path, **extra):
    return config_from_dict({
        "task": "detection",
        "model": {"name": "test_evad", "kwargs": {"num_proposals": 6}},
        "data": {"root": str(synth), "train_ann": "annotations/train.csv", "val_ann": "annotations/val.csv",
                 "batch_size": 2, "num_workers": 0, "input_size": 64, "flip": False},
        "extra": {"label_map": "annotations/label_map.pbtxt", "video_root": "videos", **extra},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"epochs": 1, "output_dir": str(tmp_path / "runs"), "name": "t", "progress_bar": False},
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """A detector trained for 2 steps on ``synth``: (config, fit result)."""
    from kinetix.engine import run

    cfg = _cfg(synth, tmp_path_factory.mktemp("det_run"))
    return cfg, run.fit(cfg, max_steps=2)


def test_train_evaluate_detect(synth, trained, tmp_path, capsys):
    from kinetix.cli.main import main
    from kinetix.engine import run

    cfg, res = trained
    assert res["checkpoint"] is not None and "val/mAP" in res["metrics"]
    metrics = run.test(cfg, res["checkpoint"], tmp_path / "eval")
    assert 0.0 <= metrics["mAP"] <= 100.0 and set(metrics["per_class"]) == {1, 2, 3, 4, 5}
    # the written predictions evaluate to exactly the reported numbers with the file-based evaluator
    again = ava.evaluate(synth / "annotations/val.csv", tmp_path / "eval/predictions.csv",
                         synth / "annotations/label_map.pbtxt")  # fmt: skip
    assert json.dumps(again) == json.dumps({k: metrics[k] for k in ("mAP", "per_class")})  # nan == nan
    # ... and the validation metric of training applies the same protocol to the same rows
    module, dm = run.TASKS["detection"].build(cfg, "test")
    run.load_weights(module, res["checkpoint"])
    import lightning.pytorch as pl

    pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        module, dm, verbose=False
    )
    assert module.frame_map()["mAP"] == pytest.approx(metrics["mAP"], abs=0.05)  # CSV rounding only
    # `kinetix test` on the detection config saved with the checkpoint prints the same frame-mAP
    saved_cfg = next(p for p in (res["checkpoint"] / "config.yaml", res["checkpoint"].parent.parent / "config.yaml")
                     if p.is_file())  # fmt: skip
    capsys.readouterr()
    assert (
        main(["test", str(saved_cfg), "--checkpoint", str(res["checkpoint"]), "--out", str(tmp_path / "e2")])
        == 0
    )
    out = capsys.readouterr().out
    assert f"frame-mAP@0.5: {metrics['mAP']:.2f}%" in out and "CKPT" not in out
    used = json.loads((tmp_path / "e2" / "metrics.json").read_text())[
        "inference"
    ]  # measured, detections compared
    assert set(used) <= {"eager", "onednn"} and f"inference: {', '.join(used)})" in out
    names = ava.read_label_map(synth / "annotations/label_map.pbtxt")
    assert all(name in out for name in names.values()) and str(tmp_path / "e2") in out
    video = next((synth / "videos").glob("*.mp4"))
    out, csv = tmp_path / "overlay.mp4", tmp_path / "preds.csv"
    png = tmp_path / "tokens.png"
    rc = main(["detect", str(video), "--checkpoint", str(res["checkpoint"]), "--out", str(out), "--csv", str(csv),
               "--threshold", "0.0", "--tokens", str(png)])  # fmt: skip
    assert rc == 0 and out.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"
    rows = ava.read_csv(csv, with_scores=True)
    assert rows and all(k[0] == video.stem for k in rows)
    # a bare weights file carries the model, its config and class names too
    csv2 = tmp_path / "preds_from_weights.csv"
    weights = res["checkpoint"] / "model.safetensors"
    assert (
        main(["detect", str(video), "--checkpoint", str(weights), "--csv", str(csv2), "--threshold", "0.0"])
        == 0
    )
    assert csv2.read_text() == csv.read_text()
    from kinetix.data.io import open_video

    with open_video(out) as r, open_video(video) as v:
        assert r.num_frames == v.num_frames and (r.height, r.width) == (v.height, v.width)


def test_bad_detection_config(synth, tmp_path):
    from kinetix.engine import detection
    from kinetix.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown detection keys"):
        detection.build(_cfg(synth, tmp_path, label_mop="x"))
    cfg = _cfg(synth, tmp_path)
    cfg.extra["label_map"] = "annotations/missing.pbtxt"
    with pytest.raises(ConfigError, match=r"missing\.pbtxt"):
        detection.build(cfg)


def test_evaluation_reports_with_unreadable_video_are_one_set(synth, trained, tmp_path, monkeypatch):
    """Keyframes of an unreadable video are skipped and listed (`excluded_unreadable.csv`); the
    next evaluation into the folder replaces every report, that list included, or, failing, none."""
    import shutil

    from kinetix.engine import run

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    video = data / "videos" / "d00001.mp4"
    good = video.read_bytes()
    video.write_bytes(good[: len(good) // 3])  # cut off: unreadable
    cfg, ckpt = _cfg(data, tmp_path), trained[1]["checkpoint"]
    cfg.data.test_ann, cfg.data.max_bad_fraction = "annotations/train.csv", 0.6
    out = tmp_path / "eval"
    first = run.test(cfg, ckpt, out)
    assert first["skipped"] == 2 and first["skipped_videos"] == [str(video)]
    assert (out / "excluded_unreadable.csv").read_text() == "d00001,1\nd00001,2\n"
    assert {r[0] for r in ava.read_csv(out / "predictions.csv", with_scores=True)} == {"d00000"}
    video.write_bytes(good)  # readable again: this evaluation skips nothing
    reports = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ava, "evaluate", broken)
    with pytest.raises(OSError, match="No space"):
        run.test(cfg, ckpt, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reports  # the first set, whole
    monkeypatch.undo()
    second = run.test(cfg, ckpt, out)
    assert second["skipped"] == 0 and json.loads((out / "metrics.json").read_text())["skipped"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_class.csv", "predictions.csv"]
    assert {r[0] for r in ava.read_csv(out / "predictions.csv", with_scores=True)} == {"d00000", "d00001"}
