"""Grad-CAM for 2D-CNN video recognisers, per frame (Selvaraju et al., "Grad-CAM: Visual Explanations
from Deep Networks via Gradient-based Localization", ICCV 2017).

For a target layer with activations ``A`` of shape ``(B*T', K, h, w)`` (time folded into the batch,
as TSN/TSM/GSM/SIFA-Net run their backbones) and the score ``y`` of one class:

    alpha[n, k] = mean_{i,j} dy / dA[n, k, i, j]          (one weight per frame and channel)
    cam[n]      = ReLU(sum_k alpha[n, k] * A[n, k])        ((B*T', h, w))

With a global-average-pooled linear head (TSN's per-frame classifier averaged over frames) this is
CAM (Zhou et al., CVPR 2016) up to the factor ``1 / (T' h w)``: ``cam[t] = ReLU(sum_k W[c, k] A[t, k])``.

The target layers are named modules found with forward hooks (:func:`gradcam_layers`): a model's
residual stages, deepest first; by default the deepest whose map is at least ``min_size`` cells on its
short side (at 224 px that is the last stage, 7x7; on the 32 px demo clips the last stage is 1x1,
so a shallower one is taken). SIFA-Net's dual res5 head adds ``layer4_dual`` to ``layer4``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import ConfigError
from kinetix.models.recognizer2d import Recognizer2D
from kinetix.models.resnet import ResNet
from kinetix.models.sifa_net import SIFANet

_STAGES = ("layer4", "layer3", "layer2", "layer1")


def gradcam_layers(model: nn.Module) -> list[tuple[str, ...]]:
    """Candidate Grad-CAM targets of ``model``, deepest first; each a tuple of module names whose
    maps are summed (SIFA-Net: ``("layer4", "layer4_dual")``). Empty when the family has none."""
    if isinstance(model, Recognizer2D) and isinstance(model.backbone, ResNet):
        return [(f"backbone.{s}",) for s in _STAGES]
    if isinstance(model, SIFANet):
        return [("layer4", "layer4_dual") if model.dual else ("layer4",)] + [(s,) for s in _STAGES[1:]]
    return []


def gradcam(
    model: nn.Module,
    clip: torch.Tensor,
    target: int | torch.Tensor | None = None,
    layers: tuple[str, ...] | None = None,
    min_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Grad-CAM of ``model`` on ``clip (B, C, T, H, W)`` for class ``target`` (an int, a ``(B,)``
    tensor, or None for each clip's top class).

    Returns ``cam (B, T', h, w)`` (non-negative, unnormalised; several layers are summed after
    resizing to the first one's ``(T', h, w)``), the logits ``(B, K)`` and the layer names used."""
    candidates = gradcam_layers(model)
    if layers is None and not candidates:
        raise ConfigError(f"Grad-CAM: no known target layer in {type(model).__name__}; pass layers=(name,)")
    names = dict(model.named_modules())
    wanted = [layers] if layers is not None else candidates
    for group in wanted:
        for n in group:
            if n not in names:
                raise ConfigError(f"Grad-CAM: {type(model).__name__} has no module named {n!r}")
    acts: dict[str, torch.Tensor] = {}
    hooks = [
        names[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
        for n in {n for g in wanted for n in g}
    ]
    try:
        with torch.enable_grad():
            logits = model(clip)
            chosen = layers or next(
                (g for g in candidates if min(acts[g[0]].shape[-2:]) >= min_size), candidates[-1]
            )
            if target is None:
                target = logits.argmax(-1)
            target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
            score = logits.gather(1, target[:, None]).sum()
            grads = torch.autograd.grad(score, [acts[n] for n in chosen])
    finally:
        for h in hooks:
            h.remove()
    B = clip.shape[0]
    cams = []
    for n, g in zip(chosen, grads):
        a = acts[n].detach()  # (B*T', K, h, w)
        alpha = g.mean((-2, -1), keepdim=True)  # (B*T', K, 1, 1)
        cam = F.relu((alpha * a).sum(1))  # (B*T', h, w)
        cams.append(cam.view(B, -1, *cam.shape[-2:]))  # (B, T', h, w)
    out = cams[0]
    for c in cams[1:]:  # e.g. SIFA-Net's dual head at half the temporal resolution
        out = out + F.interpolate(c[:, None], size=out.shape[1:], mode="area")[:, 0]  # (B, T', h, w)
    return out, logits.detach(), tuple(chosen)
