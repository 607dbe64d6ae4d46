"""The shared task skeleton: loggers by name, ``train.compile``, and every config key being read."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny

from kinetix.config import load_config, schema, valid_keys
from kinetix.engine import run
from kinetix.engine.optim import build_optimizer
from kinetix.engine.task import compile_model
from kinetix.errors import ConfigError
from kinetix.models import create_model


def _cfg(tmp_path, data_dir, overrides=()):
    p = tmp_path / "cfg.yaml"
    p.write_text(tiny.config_text(data_dir, tmp_path / "runs", train={"epochs": 1}))
    return load_config(p, overrides)


def test_csv_and_a_lightning_logger_by_name(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, ["train.loggers=[csv, tiny.RecordingLogger]"])
    out = run.fit(cfg)
    assert (out["run_dir"] / "logs" / "version_0" / "metrics.csv").is_file()
    rec = [lg for lg in out["trainer"].loggers if isinstance(lg, tiny.RecordingLogger)]
    assert len(rec) == 1 and rec[0].save_dir_arg == str(out["run_dir"])
    assert any("val/top1" in m for m in rec[0].metrics) and any(
        "train/loss_epoch" in m for m in rec[0].metrics
    )


@pytest.mark.parametrize(
    "loggers, message",
    [
        ("[nosuchlogger]", "unknown logger 'nosuchlogger'"),
        ("[tiny.make_mp4_dataset]", "is not a lightning.pytorch.loggers.Logger subclass"),
        ("[nosuchpackage.Logger]", "cannot import 'nosuchpackage.Logger'"),
    ],
)
def test_bad_logger_names_are_config_errors(tmp_path, data_dir, loggers, message):
    with pytest.raises(ConfigError, match=message):
        run.fit(_cfg(tmp_path, data_dir, [f"train.loggers={loggers}"]))


def test_tensorboard_logger_or_a_clear_error(tmp_path, data_dir):
    import importlib.util

    cfg = _cfg(tmp_path, data_dir, ["train.loggers=[csv, tensorboard]"])
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            run.fit(cfg)
    else:
        out = run.fit(cfg)
        assert list((out["run_dir"] / "tensorboard").rglob("events.out.tfevents.*"))


def test_compile_without_a_cxx_compiler_is_a_config_error(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"train.compile.*C\+\+ compiler"):
        compile_model(create_model("engine_tiny"), "cpu")


@pytest.mark.slow
def test_compile_trains_the_same_model(tmp_path, data_dir):
    """train.compile: the module runs a torch.compile'd model whose weights are the model's own;
    the checkpoint it writes holds plain keys and equals the eager model's outputs."""
    cfg = _cfg(tmp_path, data_dir, ["train.compile=true"])
    out = run.fit(cfg, max_steps=2)
    module = out["module"]
    assert isinstance(module.net, torch._dynamo.eval_frame.OptimizedModule)
    assert module.net._orig_mod is module.model
    eager = create_model("engine_tiny", checkpoint=str(out["checkpoint"] / "model.safetensors")).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    module.model.eval()
    torch.testing.assert_close(module.net(x), eager(x), rtol=1e-4, atol=1e-5)


def test_every_config_key_is_read(tmp_path, data_dir, monkeypatch):
    """Every key of the schema is read by some code path (a key nothing reads is a silent no-op):
    a training run, its test and prediction, and an AdamW optimiser for the AdamW-only keys."""
    read = set()
    sections = {cls: name for name, cls in schema.SECTIONS.items()}
    for cls, section in [*sections.items(), (schema.Config, None)]:
        names = {f.name for f in dataclasses.fields(cls)}

        def getattribute(self, attr, _names=names, _section=section, _base=object.__getattribute__):
            if attr in _names:
                read.add(f"{_section}.{attr}" if _section else attr)
            return _base(self, attr)

        monkeypatch.setattr(cls, "__getattribute__", getattribute)
    cfg = _cfg(tmp_path, data_dir)
    out = run.fit(cfg)
    run.test(cfg, out["checkpoint"], tmp_path / "eval")
    run.predict([str(next((data_dir / "videos").glob("*.mp4")))], out["checkpoint"])
    cfg.optim.name = "adamw"
    build_optimizer(create_model("engine_tiny"), cfg.optim)
    assert not set(valid_keys()) - read, f"config keys nothing reads: {sorted(set(valid_keys()) - read)}"
