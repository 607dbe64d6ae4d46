"""What the model sees in one video: maps per sampled frame, an overlay video and a PNG grid.

:func:`explain_video` takes a loaded model and the data settings its checkpoint was trained with,
reads the video's test view with the same function as ``kinetix test`` / ``predict`` (one clip,
centre crop), and computes the maps of one method (:data:`METHODS`):

* ``gradcam`` — TSN / TSM / GSM / SIFA-Net on every backbone (ResNet, BN-Inception, Inception-v3,
  MobileNetV2) and Swin / SIFA-Transformer (:mod:`.gradcam`), per frame, on the map the global
  pool reads;
* ``attention`` — TimeSformer / ViViT / VideoMAE, the last block's attention per stage
  (:func:`.attention.attention_maps`: CLS-to-patch where there is a CLS token, mean attention
  received otherwise — VideoMAE, ViViT Models 3/4);
* ``rollout`` — the same models, attention rollout (:func:`.attention.attention_rollout`);
* ``offsets`` — SIFA-Net's learned offset field (:mod:`.offsets`), colour = direction;
* ``tokens`` — EVAD's kept tokens around the middle keyframe
  (:func:`kinetix.detection.visualize.kept_token_mask`, as ``kinetix detect --tokens``).

:func:`write_explanation` writes ``<stem>_<method>.mp4`` (input | overlay per map, label and score
drawn) and ``<stem>_<method>.png`` (rows: input and one per map, columns: sampled frames).
:func:`mask_mass_share` measures how much of a heat map lies inside a ground-truth mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.data.io import open_video, write_video
from kinetix.data.sampling import keyframe_indices, test_clip_indices
from kinetix.data.views import load_test_views, test_view_transform
from kinetix.detection.evad import EVAD
from kinetix.detection.visualize import kept_token_mask
from kinetix.engine.datamodule import resolve_data_settings
from kinetix.engine.detection import keyframe_clip, load_detector
from kinetix.engine.task import model_from_checkpoint
from kinetix.errors import ConfigError, VideoDecodeError
from kinetix.models import create_model
from kinetix.models.swin import InterFrameResidual, SwinTransformer
from kinetix.models.timesformer import TimeSformer
from kinetix.models.videomae import VideoMAE
from kinetix.models.vivit import ViViT

from . import attention as attn_maps
from .gradcam import POOL_INPUT, gradcam, gradcam_layers
from .offsets import offset_blocks, offset_field
from .render import blend, colourise, flow_colours, grid_image, label_frames, save_png, upscale

METHODS = ("gradcam", "attention", "rollout", "offsets", "tokens")


@dataclass
class Explanation:
    """Maps of one method on the frames one test view of ``video`` shows the model."""

    video: str
    method: str
    frames: np.ndarray  # (T, H, W, 3) uint8: the model's input, de-normalised
    frame_indices: np.ndarray  # (T,) frame numbers in the video
    maps: dict[str, np.ndarray]  # label -> (T, H, W) float32 in [0, 1]
    colours: dict[str, np.ndarray] = field(default_factory=dict)  # label -> (T, H, W, 3) (flow)
    target: int | None = None  # explained class
    target_name: str = ""
    score: float | None = None  # softmax probability of the explained class
    predicted: str = ""
    note: str = ""  # what exactly the maps are


def methods_for(model: nn.Module) -> tuple[str, ...]:
    """The methods that apply to ``model``, the default first."""
    if isinstance(model, EVAD):
        return ("tokens",)
    if isinstance(model, (TimeSformer, ViViT, VideoMAE)):
        return ("attention", "rollout")
    out = ("gradcam",) if gradcam_layers(model) else ()
    return out + (("offsets",) if offset_blocks(model) else ())


def load_explainable(checkpoint: str | Path | None = None, model_name: str | None = None):
    """``(model, class_names, data settings)`` of a trained checkpoint (classification or detection;
    :func:`kinetix.engine.model_from_checkpoint`, as ``kinetix predict`` / ``detect`` load it) or of
    a registered model's published weights (``model_name`` alone)."""
    if checkpoint is None and model_name is None:
        raise ConfigError("pass --checkpoint CKPT (a trained kinetix checkpoint) or --model NAME")
    if checkpoint is None:
        model, cfg, names = create_model(model_name, pretrained=True).eval(), None, None
    else:
        model, cfg, names = model_from_checkpoint(checkpoint, model_name)
    if cfg is not None and cfg.task == "detection":
        return load_detector(checkpoint)
    settings = resolve_data_settings(
        model.pretrained_cfg, cfg.data if cfg else None, cfg.eval if cfg else None
    )
    return model, names, settings


def _display(view: torch.Tensor, settings) -> np.ndarray:
    """Normalised ``(C, T, H, W)`` -> uint8 ``(T, H, W, 3)`` RGB (inverse of ``Normalize``)."""
    mean = torch.tensor(settings.mean, dtype=view.dtype).view(-1, 1, 1, 1)
    std = torch.tensor(settings.std, dtype=view.dtype).view(-1, 1, 1, 1)
    x = (view * std + mean) * (255.0 / settings.value_range)
    if settings.channel_order == "BGR":
        x = x.flip(0)
    return x.permute(1, 2, 3, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _to_frames(m: torch.Tensor, T: int, H: int, W: int) -> np.ndarray:
    """Token / feature grid ``(t, h, w)`` -> ``(T, H, W)``: nearest in time (a tubelet or a strided
    step covers ``T / t`` frames), bilinear in space."""
    m = m.float()
    m = m[(torch.arange(T) * m.shape[0]) // T]  # (T, h, w)
    return F.interpolate(m[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0].numpy()


def _normalise(m: np.ndarray, shift: bool) -> np.ndarray:
    """Scale to [0, 1] over the whole clip (``shift``: min-max, else divide by the max)."""
    lo = float(m.min()) if shift else 0.0
    span = float(m.max()) - lo
    return ((m - lo) / span if span > 0 else np.zeros_like(m)).astype(np.float32)


def class_index(class_name: str, class_names: list[str] | None, num_classes: int) -> int:
    """Index of ``class_name`` among the model's classes (names, or ``"0"``, ``"1"``, ... without)."""
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if class_name in names:
        return names.index(class_name)
    raise ConfigError(
        f"--class {class_name!r} is not a class of this model; one of: {', '.join(names[:20])}"
        + (" ..." if len(names) > 20 else "")
    )


def explain_clip(model: nn.Module, clip: torch.Tensor, method: str, target=None):
    """Maps of ``method`` on one normalised clip ``(C, T, H, W)``.

    Returns ``(maps {label: (t, h, w) tensor}, flows {label: (t, h, w, 2)}, logits (K,), note)``;
    ``target`` (class index or None = top class) is used by ``gradcam`` only."""
    x = clip[None]
    if method == "gradcam":
        cam, logits, layers = gradcam(model, x, target)
        where = " + ".join(layers) + (
            " (the global pool's input)" if layers[0] in POOL_INPUT.values() else ""
        )
        step = "frame" if cam.shape[1] == clip.shape[1] else f"{clip.shape[1] // cam.shape[1]}-frame step"
        return {"Grad-CAM": cam[0]}, {}, logits[0], f"Grad-CAM on {where}, per {step}"
    if method in ("attention", "rollout"):
        logits, log, grid = attn_maps.record(model, x)
        cls = attn_maps.has_cls(model)
        if method == "attention":
            maps = {f"attention: {k}": v[0] for k, v in attn_maps.attention_maps(model, log, grid).items()}
            note = "last block, head mean" + ("" if cls else "; no CLS token: mean attention received")
        else:
            maps = {"rollout": attn_maps.attention_rollout(model, log, grid)[0]}
            note = "attention rollout, 0.5 A + 0.5 I per stage, from the " + (
                "CLS token" if cls else "mean of all tokens (no CLS token; mean pooling)"
            )
        return maps, {}, logits[0], note
    if method == "offsets":
        flow, logits, block = offset_field(model, x)
        note = f"SIFA offsets of {block}: mean tap shift, colour = direction"
        if not flow.any():
            note += " (all zero: conv_offset starts at zero and is not trained yet)"
        return {}, {"offsets": flow[0]}, logits[0], note
    raise ConfigError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


def _why_not(model: nn.Module, method: str) -> str:
    """Why ``method`` does not apply to ``model`` (the first half of the refusal message)."""
    if method == "gradcam":
        if isinstance(model, EVAD):
            return "EVAD is a detector: Grad-CAM needs one class score per clip"
        if isinstance(model, (TimeSformer, ViViT)):
            return ("it classifies from its CLS token, so the last layer's patch tokens get no "
                    "gradient and there is no pooled map for Grad-CAM to weight")  # fmt: skip
        if isinstance(model, VideoMAE):
            return ("Grad-CAM is implemented for pooled CNN / Swin feature maps, not VideoMAE's tokens; "
                    "its attention maps show the mean attention each token receives, what its mean pooling reads")  # fmt: skip
    if method in ("attention", "rollout"):
        if isinstance(model, SwinTransformer):
            return ("it attends only inside shifted local windows, which kinetix does not turn into "
                    "attention maps")  # fmt: skip
        if isinstance(model, EVAD):
            return "EVAD drops tokens between blocks, so there is no attention over the whole token grid"
        if gradcam_layers(model):
            return "it is a convolutional network: there is no attention to show"
    if method == "offsets":
        if any(isinstance(m, InterFrameResidual) for m in model.modules()):
            return ("it was built with fixed zero SIFA offsets (sifa_offsets='zero', as released): "
                    "there is no learned field; build it with sifa_offsets='learned' to learn one")  # fmt: skip
        return ("it has no SIFA block with learned offsets (only SIFA-Net and SIFA-Transformer "
                "built with sifa_offsets='learned' have one)")  # fmt: skip
    if method == "tokens":
        return "tokens shows EVAD's keyframe-centric token pruning; this model prunes no tokens"
    return "not implemented for this model"


def _check_method(model: nn.Module, method: str | None) -> str:
    allowed = methods_for(model)
    if not allowed:
        raise ConfigError(
            f"kinetix explain has no method for {type(model).__name__} models: it explains TSN/TSM/GSM/"
            "SIFA-Net/Swin (gradcam), TimeSformer/ViViT/VideoMAE (attention, rollout) and EVAD (tokens)"
        )
    method = method or allowed[0]
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if method not in allowed:
        raise ConfigError(
            f"--method {method} does not apply to {type(model).__name__}: {_why_not(model, method)}; "
            f"use --method {' or '.join(allowed)}"
        )
    return method


def explain_video(
    model: nn.Module,
    video: str | Path,
    settings,
    method: str | None = None,
    class_name: str | None = None,
    class_names: list[str] | None = None,
) -> Explanation:
    """Explain ``model`` (eval mode) on ``video`` with ``method`` (default: the family's first, see
    :func:`methods_for`); ``class_name``: the class to explain (Grad-CAM; default the top class)."""
    video = Path(video)
    if not video.exists():
        raise VideoDecodeError(video, "no such file or folder", "check the path")
    method = _check_method(model, method)
    model.eval()
    if method == "tokens":
        if class_name is not None:
            raise ConfigError("--class does not apply to EVAD's kept tokens (they do not depend on a class)")
        return _explain_tokens(model, video, settings)
    view = load_test_views(video, settings.with_views((1, 1)))[0]  # (C, T, H, W): `kinetix test --views 1x1`
    with open_video(video) as reader:
        n = reader.num_frames
    indices = test_clip_indices(n, settings.num_frames, 1, settings.sampling, settings.frame_interval)[0]
    target = None
    if class_name is not None:
        target = class_index(class_name, class_names, getattr(model, "num_classes", 0))
    raw, flows, logits, note = explain_clip(model, view, method, target)
    if target is None:
        target = int(logits.argmax())
    _, T, H, W = view.shape
    shift = method in ("attention", "rollout")
    maps = {k: _normalise(_to_frames(v, T, H, W), shift) for k, v in raw.items()}
    colours = {}
    for k, f in flows.items():
        f = f.permute(0, 3, 1, 2)  # (t, 2, h, w)
        f = np.stack([_to_frames(f[:, c], T, H, W) for c in range(2)], -1)  # (T, H, W, 2)
        colours[k], maps[k] = flow_colours(f)
    names = class_names if class_names and len(class_names) == logits.shape[-1] else None
    name = (lambda i: names[i]) if names else str
    probs = logits.float().softmax(-1)
    return Explanation(
        str(video), method, _display(view, settings), np.asarray(indices), maps, colours,
        target, name(target), float(probs[target]), name(int(probs.argmax())), note,
    )  # fmt: skip


def _explain_tokens(model, video: Path, settings) -> Explanation:
    with open_video(video) as reader:
        key = reader.num_frames // 2
        clip, frames = keyframe_clip(reader, key, settings)
        indices = keyframe_indices(key, settings.num_frames, settings.frame_interval, reader.num_frames)
    mask = kept_token_mask(model, clip[None])  # (t, h, w) bool
    T, H, W = frames.shape[:3]
    m = _to_frames(mask, T, H, W)
    kept = f"{int(mask.sum())}/{mask.numel()}"
    return Explanation(
        str(video), "tokens", frames.numpy(), np.asarray(indices), {"kept tokens": (m > 0.5).astype(np.float32)},
        note=f"EVAD keyframe-centric token pruning: {kept} tokens kept around frame {key}",
    )  # fmt: skip


def mask_mass_share(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heat map's mass inside ``mask``: ``sum(heat * mask) / sum(heat)`` over the clip
    (``heat (T, H, W)`` non-negative, ``mask`` bool of the same shape); NaN for an all-zero map."""
    total = float(heat.sum())
    return float((heat * mask).sum()) / total if total > 0 else float("nan")


def mask_for_view(mask: np.ndarray, indices: np.ndarray, settings) -> np.ndarray:
    """A full-video mask ``(N, H, W)`` bool -> the mask of the test view ``(T, h, w)``: the sampled
    frames through the test-view transform (resize, centre crop; identity normalisation)."""
    plain = replace(
        settings, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_range=255.0, channel_order="RGB"
    )
    m = torch.from_numpy(mask[indices].astype(np.uint8) * 255)[..., None].expand(
        -1, -1, -1, 3
    )  # (T, H, W, 3)
    m = test_view_transform(plain, crops=1)(m)[0]  # (3, T, h, w) in 0..255
    return m[0].numpy() >= 127.5


def _panels(expl: Explanation, min_side: int) -> list[tuple[str, np.ndarray]]:
    """``[(map label, overlay frames (T, H', W', 3))]``, frames enlarged to ``min_side``."""
    frames = upscale(expl.frames, min_side)
    out = []
    for k, m in expl.maps.items():
        colours = expl.colours.get(k)
        colours = colourise(m) if colours is None else colours
        out.append((k, blend(frames, upscale(colours, min_side), upscale(m[..., None], min_side)[..., 0])))
    return out


def _strip(videos: list[np.ndarray]) -> np.ndarray:
    """Side by side, 4 white pixels apart: ``[(T, H, W_i, 3)] -> (T, H, sum W_i + gaps, 3)``."""
    gap = np.full((*videos[0].shape[:2], 4, 3), 255, np.uint8)
    return np.concatenate([x for v in videos for x in (v, gap)][:-1], axis=2)


def _caption(expl: Explanation) -> str:
    return f"'{expl.target_name}' {expl.score:.2f}" if expl.score is not None else expl.method


def write_explanation(expl: Explanation, out_dir: str | Path, fps: float = 4.0, min_side: int = 128) -> dict:
    """``<stem>_<method>.mp4`` and ``.png`` in ``out_dir`` -> ``{"mp4": path, "png": path}``."""
    out = Path(out_dir)
    stem = f"{Path(expl.video).stem}_{expl.method}"
    frames = upscale(expl.frames, min_side)
    panels = _panels(expl, min_side)
    strip = _strip([label_frames(frames, _caption(expl))] + [label_frames(p, k) for k, p in panels])
    mp4 = write_video(out / f"{stem}.mp4", strip, fps=fps, crf=18)
    title = f"{Path(expl.video).name}: {expl.method}"
    if expl.score is not None:
        title += f" for '{expl.target_name}' (p={expl.score:.2f}; predicted '{expl.predicted}')"
    title += f". {expl.note}"
    rows = [("input", frames), *panels]
    png = save_png(grid_image(rows, [f"frame {i}" for i in expl.frame_indices], title), out / f"{stem}.png")
    return {"mp4": mp4, "png": png}


def write_comparison(
    expls: dict[str, Explanation], out_dir: str | Path, stem: str, title: str = "", fps: float = 4.0,
    min_side: int = 128,
) -> dict:  # fmt: skip
    """Several models on the same video (``{model label: Explanation}``, same frames): ``stem.png``
    with the input and each model's first map as rows, ``stem.mp4`` with them side by side."""
    out = Path(out_dir)
    first = next(iter(expls.values()))
    frames = upscale(first.frames, min_side)
    rows, videos = [("input", frames)], [label_frames(frames, "input")]
    for label, e in expls.items():
        name, panel = _panels(e, min_side)[0]
        rows.append((f"{label} {name}: {_caption(e)}", panel))
        videos.append(label_frames(panel, f"{label} {_caption(e)}"))
    mp4 = write_video(out / f"{stem}.mp4", _strip(videos), fps=fps, crf=18)
    png = save_png(grid_image(rows, [f"frame {i}" for i in first.frame_indices], title), out / f"{stem}.png")
    return {"mp4": mp4, "png": png}


def explain(
    video: str | Path,
    checkpoint: str | Path | None = None,
    out_dir: str | Path = "explain_out",
    method: str | None = None,
    class_name: str | None = None,
    model_name: str | None = None,
) -> tuple[Explanation, dict]:
    """``kinetix explain``: load the checkpoint, explain ``video``, write the mp4 and PNG."""
    model, class_names, settings = load_explainable(checkpoint, model_name)
    expl = explain_video(model, video, settings, method, class_name, class_names)
    return expl, write_explanation(expl, out_dir)
