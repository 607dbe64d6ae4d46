"""``kinetix export``: a registered model and a trained checkpoint to a checked ONNX file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kinetix.cli.main import main
from kinetix.models import create_model, save_model_weights

pytest.importorskip("onnxruntime")


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "kinetix export test_tsm" in out


def test_export_model_name_then_refuse_overwrite(tmp_path, capsys):
    out = tmp_path / "tsn.onnx"
    assert main(["export", "test_tsn", "--out", str(out), "--frames", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert out.is_file() and res["input_shape"] == [1, 3, 4, 64, 64] and res["rel_diff"] <= 1e-4
    assert main(["export", "test_tsn", "--out", str(out)]) == 2  # exists: a clean error, no traceback
    assert "--force" in capsys.readouterr().err


def test_export_checkpoint_file(tmp_path, capsys):
    """A weights file with --model NAME: the exported graph carries those weights."""
    from kinetix.deploy import OnnxRecognizer

    torch.manual_seed(0)
    model = create_model("test_tsn", num_classes=3).eval()
    torch.nn.init.normal_(model.fc.weight, 0, 0.1)
    weights = tmp_path / "w.safetensors"
    save_model_weights(model, weights)
    out = tmp_path / "m.onnx"
    code = main(["export", "test_tsn", "--checkpoint", str(weights), "--out", str(out), "--dynamic-batch"])
    assert code == 0, capsys.readouterr().err
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(OnnxRecognizer(out)(x) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_online_model_exports_a_step_model(tmp_path, capsys):
    out = tmp_path / "step.onnx"
    assert main(["export", "test_tsm_online", "--out", str(out)]) == 0
    assert "step model" in capsys.readouterr().out


def test_bad_input_is_a_clean_error(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "MODEL" in capsys.readouterr().err
    assert main(["export", "test_tsn", "--out", str(tmp_path / "x.pt")]) == 2
    assert main(["export", "no_such_model", "--out", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", "test_evad", "--out", str(tmp_path / "e.onnx")]) == 2
    assert "data-dependent" in capsys.readouterr().err
