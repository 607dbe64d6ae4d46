"""One test per item of the reliability issue, on real files the tests write (PyAV videos, hand-written
configs, checkpoints from real training runs); the zoo (``test_zoo.py``) covers the breadth."""

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
import zoo
from lightning.pytorch.callbacks import EarlyStopping

from kinetix.cli.main import main
from kinetix.config import load_config
from kinetix.data.check import check_dataset
from kinetix.data.datasets import load_annotations
from kinetix.engine import run
from kinetix.engine.checkpoint import PeriodicCheckpoint, list_checkpoints, read_manifest
from kinetix.engine.module import TrainingDivergedError
from kinetix.engine.trainer import warn_short_run
from kinetix.errors import AnnotationError, CheckpointError, ConfigError
from kinetix.models import create_model, save_model_weights
from kinetix.utils.state_dict import _unsupported_global, read_state_dict

ROOT = Path(__file__).resolve().parents[2]


def _cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _config(ws, tmp_path, **sections) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(zoo.tiny.config_text(ws.data, tmp_path / "runs", **sections))
    return p


@pytest.fixture(autouse=True)
def _fresh_run_dir_env(monkeypatch):
    monkeypatch.delenv("KINETIX_RUN_DIR", raising=False)


# ------------------------------------------------------------------------------ lost work
def test_resume_that_gets_worse_keeps_best_and_every_callback_state(workspace, tmp_path):
    """Item 1: best score, best checkpoint and early stopping survive a resume whose epoch is worse."""
    cfg = load_config(_config(workspace, tmp_path), ["train.epochs=3", "optim.lr=0.1"])
    es = EarlyStopping(monitor="val/top1", mode="max", patience=5)
    first = run.fit(cfg, callbacks=[es])
    best_dir = first["best"]
    best_before = read_manifest(best_dir)["metrics"]["val/top1"]
    weights_before = (best_dir / "model.safetensors").read_bytes()
    assert es.best_score.item() == best_before and best_before > 34  # better than chance (3 classes)
    wait_before = es.wait_count

    class Worse(pl.Callback):  # the resumed epoch ends with a model that predicts the worst class
        def on_validation_epoch_start(self, trainer, module):
            with torch.no_grad():
                module.model.head.weight.mul_(-50.0)
                module.model.head.bias.mul_(-50.0)

    es2 = EarlyStopping(monitor="val/top1", mode="max", patience=5)
    more = load_config(_config(workspace, tmp_path), ["train.epochs=4", "optim.lr=0.1"])
    second = run.fit(more, resume=first["run_dir"], callbacks=[es2, Worse()])
    worse = second["metrics"]["val/top1"]
    assert worse < best_before  # the resume did get worse ...
    assert read_manifest(best_dir)["metrics"]["val/top1"] == best_before  # ... and best is untouched
    assert (best_dir / "model.safetensors").read_bytes() == weights_before
    saver = next(c for c in second["trainer"].callbacks if isinstance(c, PeriodicCheckpoint))
    assert saver.best == best_before
    assert es2.best_score.item() == best_before and es2.wait_count == wait_before + 1  # restored, then +1


def test_resume_uses_the_runs_config_and_refuses_a_different_file(workspace, tmp_path):
    """Item 6a, and resuming from a standalone checkpoint folder writes nothing beside it."""
    cfg_file = _config(workspace, tmp_path)
    assert _cli(["train", cfg_file, "--set", "train.epochs=1"])[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    rc, _, err = _cli(["train", cfg_file, "--resume", run_dir])  # the file says epochs: 2, the run 1
    assert rc == 2 and "differs from the config" in err and "train.epochs: 1 -> 2" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "logs"]  # nothing new
    standalone = tmp_path / "elsewhere" / "step"
    shutil.copytree(list_checkpoints(run_dir)[-1], standalone)
    rc, _, err = _cli(["train", "--resume", standalone, "--set", "train.epochs=2",
                         f"train.output_dir={tmp_path / 'new'}"])  # fmt: skip
    assert rc == 0, err
    assert "train.epochs: 1 -> 2" in err  # the explicit change is shown
    assert sorted(p.name for p in standalone.parent.iterdir()) == ["step"]  # nothing written beside it
    assert read_manifest(tmp_path / "new" / "tiny")["epoch"] == 1  # the second epoch ran, in a new run


def test_evaluation_skips_and_counts_unreadable_videos_never_substitutes(workspace, tmp_path):
    """Item 2: good videos plus a zero-byte and a text file: the good ones are scored, the two bad
    ones skipped, counted in the summary and metrics.json; past the limit, a clear error."""
    val = (workspace.data / "val.txt").read_text().splitlines()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
    ann = tmp_path / "test.txt"
    ann.write_text("".join(f"{workspace.data / line.rsplit(None, 1)[0]} {line.rsplit(None, 1)[1]}\n" for line in val)
                   + f"{tmp_path / 'zero.mp4'} 0\n{tmp_path / 'notes.mp4'} 1\n")  # fmt: skip
    args = ["test", workspace.config, "--checkpoint", workspace.ckpt, "--set", f"data.test_ann={ann}",
            "data.classes=" + str(workspace.data / "classes.txt")]  # fmt: skip
    rc, out, err = _cli([*args, "--out", tmp_path / "eval", "--set", "data.max_bad_fraction=0.3"])
    assert rc == 0, err
    assert f"videos:      {len(val)} scored" in out and "skipped:     2 unreadable videos" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["count"] == len(val) and metrics["skipped"] == 2
    assert sorted(Path(p).name for p in metrics["skipped_videos"]) == ["notes.mp4", "zero.mp4"]
    assert "zero.mp4" in err and err.count("kinetix test: warning: skipping unreadable sample") == 2
    rc, out, err = _cli([*args, "--out", tmp_path / "eval2", "--set", "data.max_bad_fraction=0.1"])
    assert rc == 2 and "samples are unreadable" in err and "max_bad_fraction=0.1" in err


def test_training_counts_bad_samples_in_summary_and_manifest(workspace, tmp_path):
    """Item 3 (totals): one unreadable training video of 13 at a 10% limit is skipped and counted."""
    train = (workspace.data / "train.txt").read_text()
    (tmp_path / "junk.mp4").write_bytes(os.urandom(3000))
    ann = tmp_path / "train.txt"
    ann.write_text("".join(f"{workspace.data / ln.rsplit(None, 1)[0]} {ln.rsplit(None, 1)[1]}\n"
                           for ln in train.splitlines()) + f"{tmp_path / 'junk.mp4'} 0\n")  # fmt: skip
    rc, out, err = _cli(
        [
            "train",
            _config(workspace, tmp_path),
            "--set",
            f"data.train_ann={ann}",
            "train.epochs=1",
            "data.max_bad_fraction=0.1",
            "data.classes=" + str(workspace.data / "classes.txt"),
        ]
    )
    assert rc == 0, err
    assert "skipped:     1 unreadable train samples" in out and "junk.mp4" in err
    ckpt = list_checkpoints(tmp_path / "runs" / "tiny")[-1]
    assert read_manifest(ckpt)["bad_samples"] == {"train": 1}


def test_non_finite_loss_message_says_only_what_is_true(workspace, tmp_path):
    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, module, *args):
            with torch.no_grad():
                module.model.head.weight.fill_(float("nan"))

    cfg = load_config(_config(workspace, tmp_path), ["train.epochs=1", "train.precision=32-true"])
    with pytest.raises(TrainingDivergedError) as e:
        run.fit(cfg, callbacks=[Poison()])
    msg = str(e.value)
    assert "no checkpoint was written" in msg and "intact" not in msg
    assert "precision" not in msg and "optim.lr (now 0.05)" in msg


def test_short_runs_warn_at_start(caplog):
    from kinetix.config import Config

    cfg = Config()
    cfg.data.val_ann = "val.txt"
    cfg.train.epochs, cfg.train.val_every_n_epochs = 2, 3
    cfg.schedule.keep_rate_start_epochs, cfg.schedule.keep_rate_shrink_epochs = 1, 2
    msgs = warn_short_run(cfg)
    assert len(msgs) == 2 and "no `best` checkpoint" in msgs[0] and "keep-rate warm-up" in msgs[1]
    cfg.train.epochs = 4
    assert warn_short_run(cfg) == []


# ------------------------------------------------------------------------------ predict, NaN
def test_predict_each_video_and_report_the_bad_one(workspace):
    good, bad, other = workspace.good, workspace.bad["video/random-bytes"], workspace.bad["video/one-frame"]
    rc, out, err = _cli(
        ["predict", good, bad, other, "--model", "test_tsm", "--checkpoint", workspace.weights]
    )
    assert rc == 1
    assert f"{good}  (" in out and f"{other}  (" in out and str(bad) not in out
    assert f"kinetix predict: error: {bad}" in err and "1 of 3 videos could not be read" in err
    rc, out, _ = _cli(
        ["predict", good, bad, "--model", "test_tsm", "--checkpoint", workspace.weights, "--json"]
    )
    res = json.loads(out)  # strict JSON (json.loads accepts NaN; the text must not hold it)
    assert rc == 1 and "NaN" not in out and "error" in res[1] and res[0]["top"]


def test_non_finite_scores_are_an_error_naming_the_checkpoint(workspace, tmp_path):
    """Item 5: finite weights that overflow to inf logits, and NaN weights."""
    model = create_model("test_tsm")
    with torch.no_grad():
        model.fc.weight.fill_(3e38)  # finite, but the logits overflow
    w = save_model_weights(model, tmp_path / "overflow.safetensors")
    rc, out, err = _cli(["predict", workspace.good, "--model", "test_tsm", "--checkpoint", w, "--json"])
    assert rc == 2 and out == "" and "overflow.safetensors: gives non-finite scores" in err
    rc, out, err = _cli(
        ["predict", workspace.good, "--model", "test_tsm", "--checkpoint", workspace.bad["weights/nan"]]
    )
    assert rc == 2 and "nan.safetensors" in err and "NaN or infinite" in err and "%" not in out


# ------------------------------------------------------------------------------ configs
def test_yaml_aliases_are_refused_at_every_depth(tmp_path):
    """Item 8: billion laughs at the top, under extra:, under model.kwargs, and in --set."""
    bomb = "a: &a [lol, lol]\nb: &b [*a, *a]\n"
    nested = "model:\n  name: test_tsm\nextra:\n  x: &x [1, 2]\n  y: [*x, *x]\n"
    for text, line in ((bomb, 2), (nested, 5)):
        p = tmp_path / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=rf"c\.yaml:{line}: YAML aliases"):
            load_config(p)
    p.write_text("model:\n  name: test_tsm\n")
    with pytest.raises(ConfigError, match="YAML aliases"):
        load_config(p, ["extra.z=[&q [1], *q]"])


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("train:\n  epochs: -3", r":5: train\.epochs: must be >= 1, got -3"),
        ("data:\n  batch_size: 0", r":5: data\.batch_size: must be >= 1"),
        ("optim:\n  lr: .nan", r":5: optim\.lr: must be a finite number"),
        ("train:\n  precision: fp8", r":5: train\.precision: 'fp8' is not one of"),
        ("data:\n  max_bad_fraction: 1.5", r":5: data\.max_bad_fraction: must be in \[0, 1\], got 1.5"),
        ("eval:\n  views: [0, 3]", r"eval\.views: expected positive integers"),
        ("model:\n  name: test_tsm\n  kwargs: {drop: .inf}", r"model\.kwargs\.drop: must be a finite number"),
    ],
)
def test_config_values_are_checked_with_file_and_line(tmp_path, line, match):
    p = tmp_path / "c.yaml"
    p.write_text(
        "# a config\nmodel:\n  name: test_tsm\n" + line + "\n" if "model:" not in line else line + "\n"
    )
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_required_model_section_and_non_utf8(tmp_path):
    """Item 6: no model section is an error (unless --set names one); non-UTF-8 names the line."""
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="names no model"):
        load_config(p)
    assert load_config(p, ["model.name=test_tsn"]).model.name == "test_tsn"
    p.write_bytes("model:\n  name: test_tsm\ntrain:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c\.yaml:4: not UTF-8 text \(byte 0xe9"):
        load_config(p)


def test_shipped_configs_name_the_annotation_path_once(monkeypatch, tmp_path):
    """The missing-annotation message of the K400/SSv2/SSv1 configs shows the path as written."""
    monkeypatch.chdir(tmp_path)
    for name, ann in (("tsm_r50_k400", "data/kinetics400/train.csv"), ("tsm_r50_ssv2", "something-something-v2-train"),
                      ("gsm_bninception_ssv1", "data/ssv1/train_videofolder.txt")):  # fmt: skip
        rc, _, err = _cli(["train", ROOT / "configs" / f"{name}.yaml", "--set", "train.devices=1"])
        assert rc == 2 and "no such file or folder" in err and ann in err, err
        written = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["data"]["train_ann"]
        assert err.count(written) == 1, err  # not doubled under data.root


# ------------------------------------------------------------------------------ checkpoints, convert
def test_refusal_of_code_pickles_is_kinetix_s_own_in_any_torch_wording():
    for text in (
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
        "succeed\n\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.",
        "Weights only load failed ... Unsupported global: GLOBAL __main__.Evil was not an allowed global",
    ):
        found = _unsupported_global(text)
        assert found in ("GLOBAL posix.system", "GLOBAL __main__.Evil")
    assert _unsupported_global("PytorchStreamReader failed reading zip archive") is None


def test_malicious_pickle_never_runs_and_message_has_no_unsafe_advice(workspace):
    with pytest.raises(CheckpointError) as e:
        read_state_dict(workspace.bad["weights/malicious-pickle"])
    assert "refused to load" in str(e.value) and "weights_only" not in str(e.value)
    assert not (workspace.root / "pwned.txt").exists() and not Path("pwned.txt").exists()


def test_damaged_checkpoint_files_are_checkpoint_errors(workspace):
    from kinetix.engine.checkpoint import read_checkpoint
    from kinetix.engine.task import checkpoint_config

    with pytest.raises(CheckpointError, match=r"manifest\.json: not valid JSON"):
        read_manifest(workspace.bad["ckpt/corrupt-manifest"])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable weights"):
        read_checkpoint(workspace.bad["ckpt/truncated-weights"])
    with pytest.raises(
        CheckpointError, match=r"meta\.safetensors: its metadata entry 'config' is not valid JSON"
    ):
        checkpoint_config(workspace.bad["weights/metadata-not-json"])


def test_convert_reports_a_partial_source_and_writes_it_only_when_asked(workspace, tmp_path):
    """Item 6b: 52 of 192 EVAD tensors; output mode from the umask."""
    src, out = workspace.bad["weights/partial"], tmp_path / "evad.safetensors"
    rc, _, err = _cli(["convert", "--model", "test_evad", "--src", src, "--out", out])
    assert rc == 2 and not out.exists()
    assert (
        "partial checkpoint" in err and "52 of 192 model tensors from the source" in err and "fpn (16)" in err
    )
    old = os.umask(0o027)
    try:
        rc, printed, err = _cli(
            ["convert", "--model", "test_evad", "--src", src, "--out", out, "--allow-partial"]
        )
    finally:
        os.umask(old)
    assert rc == 0 and "PARTIAL: 140 missing" in printed and "52 of 192" in printed
    assert out.stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------------------------ data
def test_data_check_flags_empty_sets_and_warns_on_duplicates_and_outside_paths(workspace, tmp_path):
    """Item 7 and the data check warnings."""
    hdr = check_dataset(workspace.bad["ann/header-only"])
    assert not hdr.ok and hdr.empty and "no samples" in hdr.format()
    dups = check_dataset(workspace.bad["ann/duplicates"])
    assert dups.ok and any("listed 2 times" in w for w in dups.warnings)
    outside = check_dataset(workspace.bad["ann/outside-root"])
    assert any("resolves outside the dataset root" in w and "good.mp4" in w for w in outside.warnings)


def test_huge_label_index_without_class_list(tmp_path):
    ann = tmp_path / "l.txt"
    ann.write_text("a.mp4 0\nb.mp4 40000000000\n")
    with pytest.raises(AnnotationError, match=r"l\.txt:2: label index 40000000000 without a class list"):
        load_annotations(ann)


def test_errors_from_dataloader_workers_reach_the_user_without_traceback(tmp_path):
    """With num_workers > 0, PyTorch re-raises a worker's error with the worker's traceback in
    its message; the command line prints kinetix's message only."""
    from torch.utils.data import DataLoader

    from kinetix.cli.main import error_message
    from kinetix.data.datasets import VideoClassificationDataset, collate_skipping
    from kinetix.errors import DatasetError

    (tmp_path / "bad.mp4").write_bytes(b"\0" * 100)
    ds = VideoClassificationDataset(
        [("bad.mp4", 0)] * 4, tmp_path, num_frames=2, mode="test", max_bad_fraction=0.0
    )
    with pytest.raises(DatasetError) as e:
        list(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_skipping))
    assert "Traceback" in str(e.value)  # what PyTorch makes of it
    msg = error_message(e.value)
    assert "Traceback" not in msg and msg.startswith("1 of 4 samples are unreadable") and "bad.mp4" in msg
