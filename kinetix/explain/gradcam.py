"""Grad-CAM for video recognisers with a globally pooled feature map, per frame (Selvaraju et al.,
"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017).

For a target map with activations ``A`` of shape ``(B*T', K, h, w)`` (time folded into the batch,
as TSN/TSM/GSM/SIFA-Net run their backbones and Swin runs its steps) and the score ``y`` of one class:

    alpha[n, k] = mean_{i,j} dy / dA[n, k, i, j]          (one weight per frame and channel)
    cam[n]      = ReLU(sum_k alpha[n, k] * A[n, k])        ((B*T', h, w))

With a global-average-pooled linear head (TSN's per-frame classifier averaged over frames) this is
CAM (Zhou et al., CVPR 2016) up to the factor ``1 / (T' h w)``: ``cam[t] = ReLU(sum_k W[c, k] A[t, k])``.

**Target** (one structural rule, no model names): the map the model's global average pool reads.
It is taken from the model's public pieces, the forward split at the pool (:func:`split_at_pool`):
``backbone.forward_features`` of a :class:`~kinetix.models.recognizer2d.Recognizer2D` (any backbone:
ResNet ``layer4``, BN-Inception's last block — a concatenation no module returns —, Inception-v3
``Mixed_7c``, MobileNetV2 ``features.18``) and the last-stage tokens of Swin / SIFA-Transformer
(``forward_tokens``, one ``h x w`` map per step). SIFA-Net pools two paths inside its
``forward_features``; its targets are the named modules ``layer4`` (+ ``layer4_dual``).

When the pooled map is smaller than ``min_size`` cells on its short side (on the 32 px demo clips
the last stage is 1x1), the **chain of modules feeding it** is walked back, found with forward hooks:
the module whose output is the pool's input, the module whose output is that module's input, ...
(the outermost such module, in-place ones skipped), and the deepest map that is large enough is
used — ResNet ``layer3``, ``layer2``, ...; Inception-v3 ``Mixed_6e``, ...; MobileNetV2 ``features.13``,
.... BN-Inception's blocks are not modules, so its chain is empty and its last block is always used
(7x7 at 224 px).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.errors import ConfigError
from kinetix.models.recognizer2d import Recognizer2D, fold_time
from kinetix.models.sifa_net import SIFANet
from kinetix.models.swin import SwinTransformer

_SIFA_STAGES = ("layer4", "layer3", "layer2", "layer1")
# pseudo-names of the pool input (the map no module may return): the function that computes it
POOL_INPUT = {Recognizer2D: "backbone.forward_features", SwinTransformer: "forward_tokens"}


def _pool_name(model: nn.Module) -> str | None:
    return next((n for cls, n in POOL_INPUT.items() if isinstance(model, cls)), None)


def gradcam_layers(model: nn.Module) -> list[tuple[str, ...]]:
    """Default Grad-CAM targets of ``model`` known before running it, deepest first; each a tuple of
    names whose maps are summed (SIFA-Net: ``("layer4", "layer4_dual")``). The pool input of
    Recognizer2D / Swin is named by :data:`POOL_INPUT` (its feeding chain is found when the model
    runs). Empty when the family has no pooled feature map."""
    if isinstance(model, SIFANet):
        return [("layer4", "layer4_dual") if model.dual else ("layer4",)] + [(s,) for s in _SIFA_STAGES[1:]]
    name = _pool_name(model)
    return [(name,)] if name else []


def split_at_pool(model: nn.Module, clip: torch.Tensor):
    """``model(clip)`` computed as its two public halves around the global average pool:
    ``(pool input, token grid (h, w) or None, logits)``. The pool input is a map ``(B*T', K, h, w)``
    (Recognizer2D) or tokens ``(B*T', h*w, K)`` with their grid (Swin); ``None`` for other families
    (the logits are then ``model(clip)``)."""
    B = clip.shape[0]
    if isinstance(model, Recognizer2D):
        fmap = model.backbone.forward_features(fold_time(clip, model.channels_last))  # (B*T', K, h, w)
        return fmap, None, model.forward_head(model.pool(fmap, B))
    if isinstance(model, SwinTransformer):
        tokens, (t, h, w) = model.forward_tokens(clip)  # (B*T', h*w, K)
        return tokens, (h, w), model.forward_head(model.pool(tokens, B, t))
    return None, None, model(clip)


@dataclass
class _Call:
    """One module call seen by a forward hook: its first tensor input and its tensor output."""

    name: str
    input: torch.Tensor | None
    output: torch.Tensor | None


@dataclass
class _Target:
    """A Grad-CAM target: the tensors whose maps are summed, under the names reported."""

    names: tuple[str, ...]
    acts: list[torch.Tensor]  # what the gradients are taken with respect to
    grid: tuple[int, int] | None = None  # tokens (N, h*w, K) -> maps (N, K, h, w)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self):
        self.sizes = [self.grid or tuple(a.shape[-2:]) for a in self.acts]


def _tensor(x):
    """The first tensor of a hook's ``inputs`` tuple (or the value itself), else None."""
    if isinstance(x, tuple | list):
        x = x[0] if x else None
    return x if isinstance(x, torch.Tensor) else None


def _producer(calls: list[_Call], t: torch.Tensor, produced) -> _Call | None:
    """The outermost module call whose output is ``t`` (not an in-place one), preferring one whose
    input another module produced (MobileNetV2: ``features.18``, not the whole ``features``)."""
    cands = [c for c in calls if c.output is t and c.input is not t and c.input is not None]
    if not cands:
        return None
    return min(cands, key=lambda c: (not produced(c.input), c.name.count(".")))


def feeding_chain(calls: list[_Call], pool_input: torch.Tensor) -> list[_Call]:
    """``[module call producing the pool input, the call producing its input, ...]`` (deepest first)."""

    def produced(x):
        return any(c.output is x for c in calls)

    chain, t = [], pool_input
    while (c := _producer(calls, t, produced)) is not None and len(chain) < len(calls):
        chain.append(c)
        t = c.input
    return chain


def _candidates(model, calls, pool_input, grid) -> list[_Target]:
    chain = feeding_chain(calls, pool_input)
    first = chain[0].name if chain and chain[0].output is pool_input else _pool_name(model)
    out = [_Target((first,), [pool_input], grid)]
    out += [_Target((c.name,), [c.output]) for c in chain[1:] if c.output.ndim == 4]
    return out


def gradcam(
    model: nn.Module,
    clip: torch.Tensor,
    target: int | torch.Tensor | None = None,
    layers: tuple[str, ...] | None = None,
    min_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Grad-CAM of ``model`` on ``clip (B, C, T, H, W)`` for class ``target`` (an int, a ``(B,)``
    tensor, or None for each clip's top class). ``layers``: module names whose maps are summed
    (default: the pool input, see the module docstring; its pseudo-name :data:`POOL_INPUT` works too).

    Returns ``cam (B, T', h, w)`` (non-negative, unnormalised; several layers are summed after
    resizing to the first one's ``(T', h, w)``), the logits ``(B, K)`` and the layer names used."""
    default = gradcam_layers(model)
    if layers is None and not default:
        raise ConfigError(
            f"Grad-CAM: {type(model).__name__} has no globally pooled feature map that kinetix knows; "
            "pass layers=(module name, ...) whose outputs are (B*T, C, h, w) maps"
        )
    names = dict(model.named_modules())
    pool_name = _pool_name(model)
    for n in layers or ():
        if n not in names and n != pool_name:
            raise ConfigError(f"Grad-CAM: {type(model).__name__} has no module named {n!r}")
    if layers is not None:
        watch = [n for n in layers if n != pool_name]
    elif pool_name is None:
        watch = sorted({n for g in default for n in g})
    else:
        watch = [n for n in names if n]  # every module: the chain feeding the pool is found by identity
    calls: list[_Call] = []
    hooks = [
        names[n].register_forward_hook(
            lambda m, i, o, n=n: calls.append(
                _Call(n, _tensor(i), o if isinstance(o, torch.Tensor) else None)
            )
        )
        for n in watch
    ]
    try:
        with torch.enable_grad():
            pool_input, grid, logits = split_at_pool(model, clip)
            last = {c.name: c.output for c in calls}  # a module run twice: its last call
            if layers is not None:
                acts = [pool_input if n == pool_name else last[n] for n in layers]
                chosen = _Target(tuple(layers), acts, grid if tuple(layers) == (pool_name,) else None)
            else:
                if pool_input is None:  # SIFA-Net: named stages
                    cands = [_Target(g, [last[n] for n in g]) for g in default]
                else:
                    cands = _candidates(model, calls, pool_input, grid)
                # the deepest map with min_size cells; else the largest (the deepest of equals)
                big = [c for c in cands if min(c.sizes[0]) >= min_size]
                chosen = big[0] if big else max(cands, key=lambda c: min(c.sizes[0]))
            if target is None:
                target = logits.argmax(-1)
            target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
            score = logits.gather(1, target[:, None]).sum()
            grads = torch.autograd.grad(score, chosen.acts)
    finally:
        for h in hooks:
            h.remove()
    B = clip.shape[0]
    cams = []
    for a, g in zip(chosen.acts, grads):
        a = a.detach()
        if chosen.grid is not None:  # tokens (N, h*w, K) -> (N, K, h, w)
            a, g = (x.transpose(1, 2).reshape(x.shape[0], -1, *chosen.grid) for x in (a, g))
        alpha = g.mean((-2, -1), keepdim=True)  # (B*T', K, 1, 1)
        cam = F.relu((alpha * a).sum(1))  # (B*T', h, w)
        cams.append(cam.view(B, -1, *cam.shape[-2:]))  # (B, T', h, w)
    out = cams[0]
    for c in cams[1:]:  # e.g. SIFA-Net's dual head at half the temporal resolution
        out = out + F.interpolate(c[:, None], size=out.shape[1:], mode="area")[:, 0]  # (B, T', h, w)
    return out, logits.detach(), chosen.names
