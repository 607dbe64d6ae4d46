"""The files a run leaves for users: a resume's config file only once the resumed run has saved, the
bad-sample counts of a resumed run in its manifests, and evaluation reports written whole or not at
all (never a mix of two evaluations)."""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny

from kinetix.config import load_config
from kinetix.engine import run
from kinetix.engine.checkpoint import list_checkpoints, read_manifest
from kinetix.engine.datamodule import ResumableSampler
from kinetix.engine.metrics import ClassificationMeter
from kinetix.errors import DatasetError
from kinetix.utils.state_dict import atomic_paths


def _cfg(tmp_path, data_dir, overrides=(), **sections):
    p = tmp_path / "cfg.yaml"
    p.write_text(tiny.config_text(data_dir, tmp_path / "runs", **sections))
    return load_config(p, [f"data.classes={data_dir / 'classes.txt'}", *overrides])


def _train_ann(data_dir, tmp_path, bad_positions, name="train.txt") -> Path:
    """The training annotations with the videos at ``bad_positions`` replaced by random bytes."""
    lines = []
    for k, line in enumerate((data_dir / "train.txt").read_text().splitlines()):
        rel, label = line.rsplit(None, 1)
        path = data_dir / rel
        if k in bad_positions:
            path = tmp_path / f"junk-{k}.mp4"
            path.write_bytes(os.urandom(2000))
        lines.append(f"{path} {label}\n")
    (tmp_path / name).write_text("".join(lines))
    return tmp_path / name


def test_resume_config_file_only_when_the_resume_has_saved(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, ["train.epochs=1"])
    run_dir = run.fit(cfg)["run_dir"]
    before = sorted(p.name for p in list_checkpoints(run_dir))
    # a resume that fails at its first batch (every training video unreadable): no trace of it
    broken = _train_ann(data_dir, tmp_path, range(12), "broken.txt")
    bad = _cfg(tmp_path, data_dir, ["train.epochs=2", f"data.train_ann={broken}"])
    with pytest.raises(DatasetError, match="unreadable"):
        run.fit(bad, resume=run_dir)
    assert not list(run_dir.glob("config-resume-*"))
    assert sorted(p.name for p in list_checkpoints(run_dir)) == before
    # a resume that trains: its config beside the run's, whole (no temporary file left)
    more = _cfg(tmp_path, data_dir, ["train.epochs=2"])
    out = run.fit(more, resume=run_dir)
    assert out["checkpoint"].name == "step-00000006"
    written = run_dir / "config-resume-step-00000003.yaml"
    assert load_config(written) == more and load_config(run_dir / "config.yaml") == cfg
    assert sorted(p.name for p in run_dir.iterdir() if p.is_file()) == [
        "config-resume-step-00000003.yaml",
        "config.yaml",
    ]


def test_resumed_run_keeps_its_bad_sample_count(tmp_path, data_dir):
    """The one unreadable video is met in the first batch; a run resumed after it meets no other,
    and its checkpoints still count it."""
    first = ResumableSampler(12, shuffle=True, seed=0).order(0)[0]
    ann = _train_ann(data_dir, tmp_path, [first])
    overrides = [f"data.train_ann={ann}", "data.max_bad_fraction=0.1", "train.epochs=1",
                 "train.checkpoint_every_n_steps=1", "train.keep_last=5"]  # fmt: skip
    out = run.fit(_cfg(tmp_path, data_dir, overrides))
    ckpts = list_checkpoints(out["run_dir"])
    assert [read_manifest(c)["bad_samples"] for c in ckpts] == [{"train": 1}] * 3
    inodes = [(c / "manifest.json").stat().st_ino for c in ckpts]
    resumed = run.fit(_cfg(tmp_path, data_dir, overrides), resume=ckpts[0])
    assert resumed["bad_samples"] == {"train": 1, "val": 0}
    again = list_checkpoints(out["run_dir"])
    assert again == ckpts  # step-2 and step-3 rewritten by the resumed run
    assert [(c / "manifest.json").stat().st_ino != i for c, i in zip(again, inodes)] == [False, True, True]
    assert [read_manifest(c)["bad_samples"] for c in again] == [{"train": 1}] * 3


def test_atomic_paths_replace_all_files_or_none(tmp_path):
    files = [tmp_path / n for n in ("summary.json", "rows.csv", "new.txt")]
    files[0].write_text("old summary")
    files[1].write_text("old rows")
    with pytest.raises(OSError, match="disk full"), atomic_paths(*files) as tmps:
        tmps[1].write_text("new rows")
        tmps[0].write_text("new summary")
        raise OSError("disk full")  # before the last file is written
    assert [f.read_text() for f in files[:2]] == ["old summary", "old rows"] and not files[2].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "summary.json"]  # no temporary left
    with atomic_paths(*files) as tmps:
        for t, text in zip(tmps, ("a", "b", "c")):
            t.write_text(text)
    assert [f.read_text() for f in files] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "rows.csv", "summary.json"]


def test_failed_evaluation_leaves_the_previous_reports_whole(tmp_path, data_dir, monkeypatch):
    """A second `kinetix test` into the same folder that fails while writing its reports (here: the
    confusion plot) leaves every report of the first evaluation as it was, none of its own."""
    cfg = _cfg(tmp_path, data_dir, ["train.epochs=1"])
    ckpt = run.fit(cfg)["checkpoint"]
    out = tmp_path / "eval"
    first = run.test(cfg, ckpt, out)
    reports = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(reports) == {"metrics.json", "per_class.csv", "confusion.png", "predictions.jsonl"}
    assert json.loads(reports["metrics.json"])["count"] == first["count"] == 6
    fewer = tmp_path / "three.txt"  # another evaluation: other counts in every report
    fewer.write_text(
        "".join(f"{data_dir / ln}\n" for ln in (data_dir / "val.txt").read_text().splitlines()[:3])
    )

    def broken_plot(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ClassificationMeter, "plot_confusion", broken_plot)
    with pytest.raises(OSError, match="No space"):
        run.test(_cfg(tmp_path, data_dir, ["train.epochs=1", f"data.test_ann={fewer}"]), ckpt, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reports
    monkeypatch.undo()
    second = run.test(_cfg(tmp_path, data_dir, ["train.epochs=1", f"data.test_ann={fewer}"]), ckpt, out)
    assert second["count"] == 3 and json.loads((out / "metrics.json").read_text())["count"] == 3
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
