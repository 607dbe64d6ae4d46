"""Shared pytest setup: deterministic, single-threaded-ish torch for stable CPU tests."""

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread (avoids OpenMP spin-waits on a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomise(model: torch.nn.Module, sample: torch.Tensor | None = None, seed: int = 1) -> torch.nn.Module:
    """Random weights everywhere (He-scaled matrices and kernels, norm scales in [0.5, 1.5), biases
    at std 0.1), so that no zero-initialised path (classifier heads, TimeSformer's ``temporal_fc``,
    GSM's gate, SIFA's offsets, ViViT's temporal MSA) hides a stage and outputs depend on the input.
    BatchNorm statistics are calibrated on ``sample`` (default: a random clip of the model's input
    size): with arbitrary running statistics deep random nets give near-constant or exploding logits,
    and an output comparison would prove little. Eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (2 / p[0].numel()) ** 0.5)
            elif n.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if norms:
            if sample is None:
                cfg = model.pretrained_cfg
                sample = torch.randn(2, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batch
            model.train()
            model(sample)
    return model.eval()


@pytest.fixture(scope="session")
def randomize():
    """:func:`randomise` (one copy for every test that needs live random weights)."""
    return randomise
