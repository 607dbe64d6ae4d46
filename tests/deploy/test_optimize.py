"""Inference-time optimisation: same outputs as eager, training untouched, backends chosen by measurement."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kinetix.layers.attention as attention_module
import kinetix.utils.inference as inference_module
from kinetix.deploy import FastLinear, InferenceModel, onednn_copy, optimize_for_inference
from kinetix.detection.evad import DetectionOutput
from kinetix.errors import ConfigError
from kinetix.models import create_model
from kinetix.utils.inference import fast_inference, onednn_sdpa, onednn_sdpa_applies

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-4
FAMILIES = [
    ("test_tsm", {}),
    ("test_gsm", {}),
    ("test_sifa", {}),
    ("test_swin", {}),
    ("test_timesformer", {}),
    ("test_vivit", {"model": 2}),
    ("test_videomae", {}),  # q/v-only bias: F.linear on the qkv weight, not an nn.Linear call
    ("test_videomae", {"num_frames": 8, "keep_rate": 0.7}),
]


def _clip(model, b=2):
    cfg = model.pretrained_cfg
    return torch.randn(b, 3, getattr(model, "num_frames", cfg.num_frames), cfg.input_size, cfg.input_size)


@pytest.mark.parametrize("gelu", [None, "none", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_fast_linear_equals_linear(gelu, bias):
    lin = nn.Linear(48, 40, bias=bias)
    fast = FastLinear(lin, gelu)
    x = torch.randn(3, 7, 48)
    ref = F.linear(x, lin.weight, lin.bias)
    ref = ref if gelu is None else F.gelu(ref, approximate=gelu)
    with torch.no_grad():
        assert torch.allclose(fast(x), ref, atol=1e-5, rtol=1e-5)
        assert fast(x[0]).shape == (7, 40)  # 2-D input too
        lin.weight.mul_(2)  # an optimiser step: the packed weight must follow
        ref2 = F.linear(x, lin.weight, lin.bias)
        ref2 = ref2 if gelu is None else F.gelu(ref2, approximate=gelu)
        assert torch.allclose(fast(x), ref2, atol=1e-5, rtol=1e-5)
    assert fast.weight is lin.weight  # shared, not copied


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=[f"{n}{k}" for n, k in FAMILIES])
def test_onednn_copy_matches_eager(name, kwargs, randomize):
    model = randomize(create_model(name, **kwargs))
    fast = onednn_copy(model)
    assert any(isinstance(m, FastLinear) for m in fast.modules())
    assert not any(isinstance(m, FastLinear) for m in model.modules())  # the original is untouched
    x = _clip(model)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    assert (out - ref).abs().max() <= RTOL * ref.abs().max()


@pytest.mark.parametrize(("B", "H", "L", "S"), [(1, 2, 50, 50), (2, 3, 37, 61), (1, 1, 64, 64)])
def test_onednn_sdpa_equals_sdpa(B, H, L, S, monkeypatch):
    """Row blocks that do not divide L (a small block forces several), L != S, several heads and
    clips, strided q/k/v views of one qkv tensor (as Attention passes them)."""
    monkeypatch.setattr(inference_module, "_SDPA_BLOCK", 7 * S)  # 64-row minimum: 1-2 blocks
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, L, H, 16, generator=g).transpose(1, 2)  # (B, H, L, hd), strided
    kv = torch.randn(B, S, 2, H, 16, generator=g).permute(2, 0, 3, 1, 4)  # 2 x (B, H, S, hd)
    with torch.inference_mode():
        ref = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=0.3)
        out = onednn_sdpa(q, kv[0], kv[1], 0.3)
    assert out.shape == ref.shape and out.transpose(1, 2).is_contiguous()  # heads merge as a view
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)


def test_onednn_sdpa_applies_only_to_long_cpu_inference():
    long, short = torch.randn(1, 2, 400, 8), torch.randn(1, 2, 100, 8)
    with torch.no_grad():
        assert onednn_sdpa_applies(long, long) == inference_module._MKLDNN
        assert not onednn_sdpa_applies(short, short)  # torch's fused kernel is faster there
        assert onednn_sdpa_applies(long.bfloat16(), long.bfloat16()) == inference_module._BF16
        assert not onednn_sdpa_applies(long.half(), long.half())
    assert not onednn_sdpa_applies(long.requires_grad_(), long)  # autograd: SDPA


@pytest.mark.skipif(not inference_module._BF16, reason="needs oneDNN bf16")
def test_onednn_sdpa_bf16_is_as_close_to_fp32_as_torchs_kernel():
    """bf16 q/k/v (what a bf16 linear gives under autocast) attended in fp32, a bf16 output: no
    further from the fp32 result than torch's fused bf16 kernel."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 400, 16, generator=g) for _ in range(3))
    with torch.inference_mode():
        exact = F.scaled_dot_product_attention(q, k, v)
        hq, hk, hv = q.bfloat16(), k.bfloat16(), v.bfloat16()
        ours, torchs = onednn_sdpa(hq, hk, hv, 16**-0.5), F.scaled_dot_product_attention(hq, hk, hv)
    assert ours.dtype == torch.bfloat16
    err, ref_err = (ours.float() - exact).abs(), (torchs.float() - exact).abs()
    assert err.mean() <= ref_err.mean()  # the max is set by the inputs' own bf16 rounding
    assert err.max() <= 1.25 * ref_err.max()


@pytest.mark.skipif(not inference_module._BF16, reason="needs oneDNN bf16")
@pytest.mark.parametrize("gelu", [None, "none"])
def test_fast_linear_runs_bf16_gemm_under_autocast(gelu):
    """Inside CPU bf16 autocast: a bf16 GEMM with a bf16 packed weight, bf16 out (as autocast's
    F.linear), within bf16 rounding of it; the packed copy follows weight updates."""
    lin = nn.Linear(64, 48)
    fast = FastLinear(lin, gelu)
    x = torch.randn(5, 64)
    act = (lambda y: y) if gelu is None else (lambda y: F.gelu(y, approximate=gelu))
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert fast.compute_dtype(x) == torch.bfloat16
        out, ref = fast(x), act(F.linear(x, lin.weight, lin.bias))
        assert out.dtype == ref.dtype == torch.bfloat16
        assert torch.allclose(out.float(), ref.float(), atol=3e-2, rtol=2e-2)
    with torch.no_grad():
        lin.weight.mul_(-1)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        ref2 = act(F.linear(x, lin.weight, lin.bias))
        assert torch.allclose(fast(x).float(), ref2.float(), atol=3e-2, rtol=2e-2)
    with torch.autocast("cpu", torch.bfloat16):
        assert fast.compute_dtype(x.requires_grad_()) is None  # autograd: autocast's F.linear


@pytest.mark.skipif(not inference_module._BF16, reason="needs oneDNN bf16")
def test_auto_under_autocast_accepts_bf16_paths_no_worse_than_eager(randomize, monkeypatch):
    """Under bf16 autocast the oneDNN copy is compared with the fp32 output (tolerance: eager's own
    bf16 error), chosen separately from fp32, and its attention and GEMMs run in bf16."""
    monkeypatch.setattr(inference_module, "_SDPA_MIN_KEYS", 1)
    model = randomize(create_model("test_videomae"))
    opt = fast_inference(model)
    x = _clip(model)
    with torch.inference_mode():
        exact = model(x)
        opt(x)
        with torch.autocast("cpu", torch.bfloat16):
            eager_bf16 = model(x)
            out = opt(x)
    sig = (tuple(x.shape), x.dtype, torch.bfloat16)
    assert set(opt.timings[sig]) == {"eager", "onednn"}  # the bf16 oneDNN copy passed the check
    assert len(opt.chosen) == 2  # fp32 and bf16 chosen separately
    assert (out.float() - exact).abs().max() <= 2 * (eager_bf16.float() - exact).abs().max()


@pytest.mark.skipif(not inference_module._MKLDNN, reason="needs oneDNN")
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("test_videomae", {}), ("test_timesformer", {"attention": "joint"}), ("test_vivit", {"model": 1})],
)
def test_long_sequence_attention_and_patch_embedding_run_on_onednn(name, kwargs, randomize, monkeypatch):
    """The copy's attention goes through onednn_sdpa (threshold lowered so tiny models qualify) and
    its patch embedding through a FastLinear; the outputs stay eager's, the state dict unchanged."""
    monkeypatch.setattr(inference_module, "_SDPA_MIN_KEYS", 1)
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return onednn_sdpa(*args)

    monkeypatch.setattr(attention_module, "onednn_sdpa", counted)
    model = randomize(create_model(name, **kwargs))
    fast = onednn_copy(model)
    x = _clip(model)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    assert len(calls) == len(model.blocks)  # every block's attention, none in the original
    assert isinstance(fast.patch_embed.__dict__.get("_fast"), FastLinear)
    assert "_fast" not in model.patch_embed.__dict__
    assert fast.state_dict().keys() == model.state_dict().keys()
    assert (out - ref).abs().max() <= RTOL * ref.abs().max()


def test_structured_outputs_are_compared_leaf_by_leaf():
    """A detector's outputs (lists of dataclasses of tensors): each float tensor relative to its own
    scale; a different label, count or structure is never 'close'."""
    a = [
        DetectionOutput(
            torch.tensor([[0.0, 0, 100, 50]]), torch.tensor([0.9]), torch.tensor([2]), torch.rand(1, 4)
        )
    ]
    b = [DetectionOutput(a[0].boxes + 0.01, a[0].scores, a[0].labels, a[0].action_scores)]
    assert inference_module._distance(a, a) == 0
    assert inference_module._distance(b, a) == pytest.approx(1e-4, rel=1e-3)  # 0.01 px on a 100 px scale
    relabelled = [DetectionOutput(a[0].boxes, a[0].scores, torch.tensor([1]), a[0].action_scores)]
    assert inference_module._distance(relabelled, a) == float("inf")
    assert inference_module._distance(a + a, a) == float("inf")
    assert inference_module._distance(a[0].boxes, a) == float("inf")


def test_detector_runs_through_the_measured_inference_path(randomize):
    """EVAD (what detection ``kinetix test`` scores through): the oneDNN copy's detections match
    eager's, so ``auto`` times it as a candidate; the result equals eager's within rounding."""
    model = create_model("test_evad").eval()
    opt = fast_inference(model)
    x = _clip(model)
    with torch.inference_mode():
        ref, out = model(x), opt(x)
    assert set(opt.timings[(tuple(x.shape), x.dtype, None)]) == {"eager", "onednn"}
    assert inference_module._distance(out, ref) <= RTOL


def test_onednn_copy_still_trains_like_the_original(randomize):
    model = randomize(create_model("test_timesformer")).train()
    fast = onednn_copy(model)
    x = _clip(model)
    torch.manual_seed(0)
    model(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(0)
    fast(x).square().sum().backward()  # same parameters: the grads land on the original's
    for n, p in model.named_parameters():
        if n in grads:
            assert torch.allclose(p.grad, grads[n], atol=1e-6, rtol=1e-5), n


def test_inference_model_auto_measures_and_keeps_the_model_trainable(randomize):
    model = randomize(create_model("test_videomae"))
    opt = fast_inference(model)
    x = _clip(model)
    with torch.no_grad():
        out = opt(x)
        ref = model(x)
    sig = (tuple(x.shape), x.dtype, None)  # no autocast
    assert opt.chosen[sig] in ("eager", "onednn")
    assert set(opt.timings[sig]) == {"eager", "onednn"}  # both matched eager and were timed
    assert (out - ref).abs().max() <= RTOL * ref.abs().max()
    assert opt.pretrained_cfg is model.pretrained_cfg  # attributes fall through
    # training through the wrapper (autograd on) is the original module's forward
    opt.train()
    assert model.training
    loss = opt(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # and the original model still has plain nn.Linear layers
    assert not any(isinstance(m, FastLinear) for m in model.modules())


def test_forced_backends_and_bad_name(randomize):
    model = randomize(create_model("test_tsm"))
    x = _clip(model)
    with torch.no_grad():
        ref = model(x)
        for backend in ("eager", "onednn"):
            out = optimize_for_inference(model, backend)(x)
            assert (out - ref).abs().max() <= RTOL * ref.abs().max()
    with pytest.raises(ConfigError, match="backend"):
        InferenceModel(model, "tensorrt")


def test_onnxruntime_backend_auto_and_dynamic_batch(randomize):
    """``auto`` with onnxruntime times three candidates; the onnxruntime one is exported once per
    clip shape and runs any batch size."""
    pytest.importorskip("onnxruntime")
    model = randomize(create_model("test_tsn"))
    x = _clip(model, 1)
    opt = optimize_for_inference(model, example=x, include_onnxruntime=True)
    assert set(opt.timings[(tuple(x.shape), x.dtype, None)]) == {"eager", "onednn", "onnxruntime"}
    ort = opt.candidate("onnxruntime", x)
    with torch.no_grad():
        for b in (1, 3):
            xb = _clip(model, b)
            ref = model(xb)
            assert (opt.candidate("onnxruntime", xb)(xb) - ref).abs().max() <= RTOL * ref.abs().max()
    assert opt.candidate("onnxruntime", _clip(model, 3)) is ort
    assert sum(k[0] == "onnxruntime" for k in opt.built) == 1
