"""The same models and engine on a CUDA GPU (skipped on machines without one, such as CI).

Each check compares the GPU against the CPU on the same weights and input, or a streaming model
against its causal clip model, so a device-dependent op (a CPU-only kernel, a hard-coded
``device="cpu"``, an index tensor left on the host) fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kinetix
from kinetix.models.recognizer2d import StreamingRecognizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RECOGNISERS = [n for n in kinetix.list_models("test_*") if n != "test_evad"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _exact_cuda_math():
    # TF32 convolutions/matmuls would differ from the CPU by ~1e-3; compare full fp32
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _model_and_input(name: str):
    torch.manual_seed(0)
    model = kinetix.create_model(name).eval()
    for p in model.parameters():  # zero-initialised heads would make the comparison vacuous
        if p.dim() >= 2 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.02)
    cfg = model.pretrained_cfg
    x = torch.randn(2, 3, cfg.num_frames, cfg.input_size, cfg.input_size)
    return model, x


@pytest.mark.parametrize("name", RECOGNISERS)
def test_gpu_equals_cpu(name):
    model, x = _model_and_input(name)
    with torch.no_grad():
        ref = model(x)
        out = model.cuda()(x.cuda()).cpu()
    scale = ref.abs().max().clamp_min(1e-6)
    assert ((out - ref).abs().max() / scale) < 1e-4, name


@pytest.mark.parametrize("name", RECOGNISERS)
def test_gpu_bf16_autocast_trains(name):
    model, x = _model_and_input(name)
    model = model.cuda().train()
    y = torch.tensor([0, 1], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x.cuda()), y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["test_tsm_online", "test_tsm_mobilenetv2_online"])
def test_gpu_streaming_equals_causal_clip(name):
    model, x = _model_and_input(name)
    model = model.cuda()
    x = x.cuda()
    online = StreamingRecognizer(model)
    with torch.no_grad():
        ref = model.forward_frames(x) if hasattr(model, "forward_frames") else None
        steps = torch.stack([online(x[:, :, t]) for t in range(x.shape[2])], dim=1)  # (B, T, K)
    if ref is None:
        pytest.skip("no per-frame clip output to compare")
    ref = ref.reshape(steps.shape)
    assert (steps - ref).abs().max() < 1e-4


def test_gpu_evad_forward():
    torch.manual_seed(0)
    model = kinetix.create_model("test_evad").eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, 3, cfg.num_frames, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        (ref,) = model(x)
        (out,) = model.cuda()(x.cuda())
    for field in ("boxes", "scores", "action_scores"):
        a, b = getattr(out, field).cpu(), getattr(ref, field)
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-3, rtol=1e-3), field


def test_gpu_lightning_training_run(tmp_path):
    """`kinetix data synth` + `kinetix train` on the GPU in bf16, then `kinetix test` of the run."""
    env_py = [sys.executable, "-m", "kinetix"]
    data = tmp_path / "synth"
    run = lambda *a: subprocess.run([*env_py, *a], cwd=tmp_path, capture_output=True, text=True)  # noqa: E731
    r = run("data", "synth", "--kind", "temporal", "--out", str(data), "--size", "32", "--num-videos", "48")
    assert r.returncode == 0, r.stderr
    sets = [
        f"data.train_ann={data / 'train.txt'}",
        f"data.val_ann={data / 'val.txt'}",
        f"data.test_ann={data / 'val.txt'}",
        "train.epochs=2",
        "train.accelerator=gpu",
        "train.precision=bf16-mixed",
        f"train.output_dir={tmp_path / 'runs'}",
    ]
    r = run("train", str(ROOT / "configs" / "demo_tsm.yaml"), "--set", *sets)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(
        "test",
        str(ROOT / "configs" / "demo_tsm.yaml"),
        "--checkpoint",
        str(tmp_path / "runs" / "demo_tsm"),
        "--set",
        *sets,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top-1" in r.stdout
