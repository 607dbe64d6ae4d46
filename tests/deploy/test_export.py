"""ONNX export of every recogniser family, checked in onnxruntime against eager PyTorch.

Weights that start at zero in the released recipes (classifier heads at std 1e-3, TimeSformer's
``temporal_fc``, GSM's gate conv, SIFA's offset conv, ViViT's temporal MSA) are re-initialised
randomly, so the logits are far from constant and every temporal path is exercised. The export
itself is checked on its trace input; the tests check the written file again on a *different* clip
(a graph with a baked-in input would fail), frame by frame for the online step models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from kinetix.deploy import (
    OnnxRecognizer,
    OnnxStreamingRecognizer,
    export_onnx,
    export_step_onnx,
    step_cache_spec,
)
from kinetix.errors import ExportError, MissingDependencyError
from kinetix.models import create_model

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-4

# every registered recogniser family, tiny variant (name, kwargs)
TINY = [
    ("test_tsn", {}),
    ("test_tsm", {}),
    ("test_gsm", {}),
    ("test_sifa", {}),
    ("test_swin", {}),
    ("test_sifa_swin", {}),
    *[("test_timesformer", {"attention": a}) for a in ("divided", "joint", "space", "local_global", "axial")],
    *[("test_vivit", {"model": m}) for m in (1, 2, 3, 4)],
    ("test_videomae", {}),
    # EVAD keyframe token pruning in the recognisers
    ("test_videomae", {"num_frames": 8, "keep_rate": 0.7}),
    ("test_vivit", {"model": 1, "num_frames": 8, "keep_rate": 0.7}),
    ("test_timesformer", {"attention": "joint", "keep_rate": 0.7}),
]


def _clip(model, batch=1, seed=7):
    cfg = model.pretrained_cfg
    t = getattr(model, "num_frames", cfg.num_frames)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, t, cfg.input_size, cfg.input_size, generator=g)


def _check_file(model, path, batch=1):
    """The written file on a new clip: same logits as eager, which are not near-constant."""
    x = _clip(model, batch)
    with torch.no_grad():
        ref = model(x)
    scale = float(ref.abs().max())
    spread = float((ref.max(-1).values - ref.min(-1).values).min())
    assert spread > 100 * RTOL * scale, "logits near-constant: the tolerance would be vacuous"
    out = OnnxRecognizer(path)(x)
    assert np.abs(out - ref.numpy()).max() <= RTOL * scale
    return ref


@pytest.mark.parametrize(
    ("name", "kwargs"), TINY, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in TINY]
)
def test_export_tiny_family(tmp_path, randomize, name, kwargs):
    model = randomize(create_model(name, **kwargs))
    res = export_onnx(model, tmp_path / "m.onnx")
    assert res.path.is_file() and res.rel_diff <= RTOL
    _check_file(model, res.path)


@pytest.mark.slow  # CI covers --dynamic-batch in tests/cli/test_export_cli.py
def test_export_dynamic_batch(tmp_path, randomize):
    model = randomize(create_model("test_tsm"))
    res = export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True)
    assert res.dynamic_batch
    for b in (1, 3):
        _check_file(model, res.path, batch=b)


def test_sifa_exports_with_a_dynamic_batch(tmp_path, randomize):
    """The tiny SIFA-Net's dual branch runs one frame (no next frame to attend to): that block is
    the identity without a zero-size reshape, which onnxruntime refused with a dynamic batch."""
    model = randomize(create_model("test_sifa"))
    res = export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True)
    for b in (1, 2):
        _check_file(model, res.path, batch=b)


def test_graph_onnxruntime_refuses_is_an_export_error(tmp_path, randomize, monkeypatch):
    """Whatever onnxruntime raises while loading the exported graph becomes an ExportError that says
    what to try, and nothing is written (no traceback from ``kinetix export``)."""
    import kinetix.deploy.export as export_module

    def refuse(path, *args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed: ShapeInferenceError")

    monkeypatch.setattr(export_module, "make_session", refuse)
    model = randomize(create_model("test_tsn"))
    with pytest.raises(ExportError, match=r"onnxruntime cannot load or run.*without --dynamic-batch"):
        export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True)
    with pytest.raises(ExportError, match="onnxruntime cannot load or run"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "kwargs"), [("test_tsm_online", {}), ("test_gsm", {"causal": True})])
def test_step_model_streams_like_causal_offline(tmp_path, randomize, name, kwargs):
    """Frame by frame in onnxruntime == the causal model on the whole clip (``forward_frames``), and
    ``reset`` starts a new video."""
    model = randomize(create_model(name, **kwargs))
    res = export_step_onnx(model, tmp_path / "step.onnx")
    assert res.step and res.rel_diff <= RTOL
    runner = OnnxStreamingRecognizer(res.path)
    spec = step_cache_spec(model)
    assert [tuple(s) for s in runner.cache_shapes] == [s for group in spec for s in group]
    x = _clip(model, seed=11)  # (1, 3, T, S, S)
    with torch.no_grad():
        ref = model.forward_frames(x)[0]  # (T, classes): frame t sees frames <= t only
    scale = float(ref.abs().max())
    for _ in range(2):  # the second pass after reset() must repeat the first
        runner.reset()
        out = np.concatenate([runner.step(x[0, :, t]) for t in range(x.shape[2])])
        assert np.abs(out - ref.numpy()).max() <= RTOL * scale
    # the caches carry the past: without them, frames after the first differ
    fresh = [OnnxStreamingRecognizer(res.path).step(x[0, :, t]) for t in range(2)]
    assert np.abs(fresh[1][0] - ref[1].numpy()).max() > 10 * RTOL * scale


def test_step_export_refuses_offline_model(tmp_path):
    with pytest.raises(ExportError, match="causal"):
        export_step_onnx(create_model("test_tsm"), tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


class _Drifting(nn.Module):
    """Its output depends on Python state that a traced graph freezes: the export cannot match."""

    pretrained_cfg = create_model("test_tsn").pretrained_cfg

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.mean((2, 3, 4))) * self.calls


def test_mismatching_export_is_refused(tmp_path):
    with pytest.raises(ExportError, match="does not reproduce"):
        export_onnx(_Drifting(), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


def test_evad_is_refused_with_reason(tmp_path):
    with pytest.raises(ExportError, match=r"data-dependent"):
        export_onnx(create_model("test_evad"), tmp_path / "evad.onnx")


def test_missing_dependency_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    with pytest.raises(MissingDependencyError, match=r"kinetix\[deploy\]"):
        export_onnx(create_model("test_tsn"), tmp_path / "m.onnx")


# ---- real-size models ---------------------------------------------------------------------------
BIG = [
    ("tsm_r50", {}),
    ("tsn_bninception", {}),
    ("tsm_bninception", {}),
    ("gsm_bninception", {}),
    ("timesformer_base", {}),
    ("vivit_base_m2", {}),
    ("videomae_base", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), BIG, ids=[n for n, _ in BIG])
def test_export_full_size(tmp_path, randomize, name, kwargs):
    model = randomize(create_model(name, **kwargs), std=0.02)
    res = export_onnx(model, tmp_path / "m.onnx")
    assert res.rel_diff <= RTOL
    _check_file(model, res.path)


@pytest.mark.slow
def test_export_step_tsm_r50_online(tmp_path, randomize):
    model = randomize(create_model("tsm_r50_online"), std=0.02)
    res = export_step_onnx(model, tmp_path / "step.onnx", check_frames=4)
    assert res.rel_diff <= RTOL
