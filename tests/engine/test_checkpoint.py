"""Checkpoint folders: round trip, atomic replacement, manifest, latest-checkpoint resolution,
refusal to overwrite foreign files or to unpickle code."""

import json

import pytest
import torch

import kinetix
from kinetix.engine import checkpoint as ck
from kinetix.errors import CheckpointError


def _ckpt(step=3, scale=1.0):
    return {
        "epoch": 1,
        "global_step": step,
        "state_dict": {
            "model.w": torch.ones(2, 3) * scale,
            "ema.module.w": torch.zeros(2, 3),
            "ema.n": torch.tensor(4),
        },
        "optimizer_states": [
            {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}
        ],
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 1}}}},
        "kinetix": {
            "model_name": "m",
            "config": {"optim": {"lr": 0.1}},
            "config_yaml": "optim:\n  lr: 0.1\n",
            "class_names": ["a", "b"],
            "dataset_fingerprint": "abc",
        },
    }


def test_round_trip_layout_and_manifest(tmp_path):
    path = ck.write_checkpoint(_ckpt(), tmp_path / "step-00000003")
    names = sorted(p.name for p in path.iterdir())
    assert names == [
        "config.yaml",
        "ema.safetensors",
        "manifest.json",
        "model.safetensors",
        "training_state.pt",
    ]
    back = ck.read_checkpoint(path)
    assert torch.equal(back["state_dict"]["model.w"], torch.ones(2, 3))
    assert set(back["state_dict"]) == {"model.w", "ema.module.w", "ema.n"}
    assert back["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1
    man = json.loads((path / "manifest.json").read_text())
    assert man["kinetix"] == kinetix.__version__ and man["torch"] == torch.__version__
    assert man["av"] and man["global_step"] == 3 and man["dataset_fingerprint"] == "abc"
    assert man["config"] == {"optim": {"lr": 0.1}} and man["class_names"] == ["a", "b"]
    from kinetix.utils.state_dict import read_safetensors_metadata as weights_metadata

    meta = weights_metadata(path / "model.safetensors")
    assert json.loads(meta["config"]) == {"optim": {"lr": 0.1}} and meta["kinetix_model"] == "m"


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    dest = tmp_path / "best"
    ck.write_checkpoint(_ckpt(scale=1.0), dest)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        ck.write_checkpoint(_ckpt(scale=2.0), dest)
    monkeypatch.undo()
    assert torch.equal(ck.read_checkpoint(dest)["state_dict"]["model.w"], torch.ones(2, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary folder left behind
    ck.write_checkpoint(_ckpt(scale=2.0), dest)  # a successful write replaces it
    assert torch.equal(ck.read_checkpoint(dest)["state_dict"]["model.w"], 2 * torch.ones(2, 3))


def test_never_overwrites_foreign_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a kinetix checkpoint; refusing"):
        ck.write_checkpoint(_ckpt(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_resolve_latest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    for s in (2, 10, 4):
        ck.write_checkpoint(_ckpt(step=s), run / "checkpoints" / f"step-{s:08d}")
    (run / "checkpoints" / "step-00000099").mkdir()  # incomplete (no manifest): ignored
    assert ck.resolve_checkpoint(run).name == "step-00000010"
    assert ck.resolve_checkpoint(run / "checkpoints").name == "step-00000010"
    assert (
        ck.resolve_checkpoint(run / "checkpoints" / "step-00000004" / "model.safetensors").name
        == "step-00000004"
    )
    with pytest.raises(CheckpointError, match="complete kinetix checkpoint"):
        ck.read_checkpoint(run / "checkpoints" / "step-00000099")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ck.resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="holds no complete kinetix checkpoint"):
        ck.resolve_checkpoint(tmp_path)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_training_state_with_code_is_refused(tmp_path):
    path = ck.write_checkpoint(_ckpt(), tmp_path / "c")
    torch.save({"x": Evil()}, path / "training_state.pt")
    with pytest.raises(CheckpointError, match="unreadable training state"):
        ck.read_checkpoint(path)
