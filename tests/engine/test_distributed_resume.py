"""Subprocess tests: a real 2-process DDP fit on CPU (gloo), one on a dataset with unreadable files
spread over both ranks, and a run killed with SIGKILL mid-epoch then resumed, which must end with
exactly the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny

from kinetix.engine.checkpoint import list_checkpoints, read_manifest
from kinetix.engine.datamodule import ResumableSampler

SCRIPT = Path(__file__).parent / "train_script.py"
ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KINETIX_RUN_DIR", "LOCAL_RANK", "WORLD_SIZE"))
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return env


def _cmd(cfg, out, *extra):
    return [sys.executable, str(SCRIPT), str(cfg), str(out), *extra]


def _run_two_ranks(cfg, tmp_path) -> subprocess.CompletedProcess:
    """``train_script.py`` on ``cfg`` as 2 DDP processes (gloo on CPU); reports in ``tmp_path/out``."""
    overrides = ["--set", "train.devices=2", "train.strategy=ddp", "train.accelerator=cpu"]
    return subprocess.run(
        _cmd(cfg, tmp_path / "out", *overrides),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )


def test_ddp_two_processes_gloo_ranks_agree(tmp_path, data_dir):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny.config_text(data_dir, tmp_path / "runs", train={"epochs": 2}, data={"batch_size": 2}))
    proc = _run_two_ranks(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "out" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "out" / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["hash"] == r1["hash"]  # identical weights on both ranks after all-reduced updates
    # each epoch, the ranks trained on disjoint halves of the 12 training videos
    per_epoch = len(r0["seen"]) // 2
    for e in range(2):
        a = set(r0["seen"][e * per_epoch : (e + 1) * per_epoch])
        b = set(r1["seen"][e * per_epoch : (e + 1) * per_epoch])
        assert not a & b and len(a | b) == 12
    assert r0["step"] == 2 * 3  # 6 samples per rank / batch 2 = 3 steps per epoch
    # the checkpoint written by rank 0 holds those weights
    assert list_checkpoints(tmp_path / "runs" / "tiny")[-1].name == "step-00000006"


def _with_bad_files(data_dir, tmp_path, split, positions) -> tuple[Path, list[str]]:
    """A copy of ``split``'s annotation file whose videos at ``positions`` are replaced by unreadable
    files (random bytes; an mp4 cut to a third); returns the file and the bad paths."""
    lines, bad = [], []
    for k, line in enumerate((data_dir / f"{split}.txt").read_text().splitlines()):
        rel, label = line.rsplit(None, 1)
        path = data_dir / rel
        if k in positions:
            data = path.read_bytes()
            path = tmp_path / f"bad-{split}-{k}.mp4"
            path.write_bytes(data[: len(data) // 3] if len(bad) % 2 else os.urandom(2000))
            bad.append(str(path))
        lines.append(f"{path} {label}\n")
    ann = tmp_path / f"{split}.txt"
    ann.write_text("".join(lines))
    return ann, sorted(bad)


def _ddp_with_bad_files(tmp_path, data_dir, max_bad_fraction):
    """2 ranks, 1 epoch: one bad training video in each rank's share of epoch 0, one bad
    validation video in each rank's share (ranks take every other one)."""
    first = [ResumableSampler(12, shuffle=True, seed=0, rank=r, world_size=2).order(0)[0] for r in (0, 1)]
    train_ann, bad_train = _with_bad_files(data_dir, tmp_path, "train", first)
    val_ann, bad_val = _with_bad_files(data_dir, tmp_path, "val", [0, 1])
    cfg = tmp_path / "cfg.yaml"
    data = dict(
        batch_size=2, train_ann=str(train_ann), val_ann=str(val_ann), max_bad_fraction=max_bad_fraction
    )
    data["classes"] = str(data_dir / "classes.txt")
    cfg.write_text(tiny.config_text(data_dir, tmp_path / "runs", train={"epochs": 1}, data=data))
    return _run_two_ranks(cfg, tmp_path), bad_train, bad_val


def test_ddp_bad_samples_counted_over_all_ranks(tmp_path, data_dir):
    """Each rank meets other unreadable files; the manifest and every rank's counts (the printed
    summary's) hold the whole split's: 2 of 12 training and 2 of 6 validation videos."""
    proc, bad_train, bad_val = _ddp_with_bad_files(tmp_path, data_dir, 0.4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(list_checkpoints(tmp_path / "runs" / "tiny")[-1])
    assert manifest["bad_samples"] == {"train": 2, "val": 2}
    for rank in (0, 1):
        r = json.loads((tmp_path / "out" / f"rank{rank}.json").read_text())
        assert r["bad_samples"] == {"train": 2, "val": 2, "test": 0}
        assert r["bad_files"] == {"train": bad_train, "val": bad_val}


@pytest.mark.slow
def test_ddp_bad_fraction_checked_on_the_whole_split(tmp_path, data_dir):
    """1 of the 3 validation videos of each rank is unreadable (1/6 of the split: under a 25% limit),
    2 of the 6 of the split (33%: over it): the run stops, naming both files."""
    proc, _, bad_val = _ddp_with_bad_files(tmp_path, data_dir, 0.25)
    assert proc.returncode != 0
    assert "2 of 6 samples are unreadable" in proc.stderr and "max_bad_fraction=0.25" in proc.stderr
    assert all(p in proc.stderr for p in bad_val)


def _final_weights(run_dir):
    from safetensors.torch import load_file

    from kinetix.engine.checkpoint import resolve_checkpoint

    ck = resolve_checkpoint(run_dir)
    return ck.name, {
        **load_file(str(ck / "model.safetensors")),
        **{"ema." + k: v for k, v in load_file(str(ck / "ema.safetensors")).items()},
    }


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, data_dir):
    sections = dict(
        train={"epochs": 2, "checkpoint_every_n_steps": 1, "keep_last": 3, "ema": True, "mixup_alpha": 0.3},
        data={"batch_size": 2},
        model={"name": "engine_tiny", "kwargs": {"drop": 0.3}},
    )
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cfg.yaml").write_text(
            tiny.config_text(data_dir, tmp_path / name / "runs", **sections)
        )
    # uninterrupted reference
    ref = subprocess.run(
        _cmd(tmp_path / "a" / "cfg.yaml", tmp_path / "a" / "out"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    # killed run: slow steps, SIGKILL once a mid-epoch-1 checkpoint (step 8 of 12) exists
    run_b = tmp_path / "b" / "runs" / "tiny"
    proc = subprocess.Popen(
        _cmd(tmp_path / "b" / "cfg.yaml", tmp_path / "b" / "out", "--sleep", "0.4"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 200
    while not (run_b / "checkpoints" / "step-00000008" / "manifest.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached step 8"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "b" / "out").exists()
    killed_at, _ = _final_weights(run_b)
    assert killed_at != "step-00000012"  # really interrupted before the end
    resumed = subprocess.run(
        _cmd(tmp_path / "b" / "cfg.yaml", tmp_path / "b" / "out", "--resume", str(run_b)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    name_a, a = _final_weights(tmp_path / "a" / "runs" / "tiny")
    name_b, b = _final_weights(run_b)
    assert name_a == name_b == "step-00000012"
    assert set(a) == set(b)
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"resumed run differs in {bad}"
    ra = json.loads((tmp_path / "a" / "out" / "rank0.json").read_text())
    rb = json.loads((tmp_path / "b" / "out" / "rank0.json").read_text())
    assert ra["hash"] == rb["hash"]
    # the resumed run trained only on the batches the killed run had not finished
    assert rb["seen"] == ra["seen"][len(ra["seen"]) - len(rb["seen"]) :] and len(rb["seen"]) < len(ra["seen"])
