"""Synthetic video datasets written as real H.264 mp4 files: the embedded default data of kinetix.

``generate_temporal`` — action recognition that needs temporal order. Moving shapes whose classes
come in **time-reversed pairs** (moving left / right, rotating clockwise / counter-clockwise,
growing / shrinking, appearing / disappearing, ...): a video of one class of a pair is rendered as
the exact time reverse of a video of the other class drawn from the same random parameters, so a
model that ignores frame order (e.g. TSN's average of per-frame scores) cannot beat chance inside a
pair, while TSM-style temporal modelling can. The appearance-only classes (a static red square, a
static blue circle; the moving classes draw triangles, bars and crosses in random colours) are
solvable from a single frame. Layout (Kinetics-style)::

    out/videos/<id>.mp4          (T = fps * seconds, size x size, H.264)
    out/train.csv, out/val.csv   label,youtube_id,time_start,time_end,split
    out/train.txt, out/val.txt   videos/<id>.mp4 <label_index>
    out/classes.txt              one class name per line (index = line number)
    out/synth.json               classes, reversed_pairs, appearance-only classes, parameters, counts

Every video can give the mask of its shape (:func:`temporal_mask`, :func:`load_temporal_mask`),
recomputed from the same parameters: the ground truth of where a model should look.

``generate_detection`` — spatio-temporal action detection in AVA format: 1-3 person-like figures
(body, head, arm) per clip whose actions are defined by motion (stand / walk left / walk right, plus
jump and wave, multi-label), with person boxes at 1 s keyframes (frame ``round(t * fps)``)::

    out/videos/<video_id>.mp4
    out/annotations/{train,val}.csv       video_id,timestamp,x1,y1,x2,y2,action_id,person_id
    out/annotations/label_map.pbtxt       item { name: "..." id: N }
    out/annotations/excluded_timestamps.csv
    out/synth.json

Everything is deterministic given ``seed`` (one encoder thread, per-video seeds), and drawing is
vectorised over ``(T, H, W)``: a few hundred videos take seconds.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinetix.data.io import write_video
from kinetix.errors import DatasetError

__all__ = [
    "DEFAULT_TEMPORAL_CLASSES",
    "DETECTION_ACTIONS",
    "TEMPORAL_CLASSES",
    "generate",
    "generate_detection",
    "generate_temporal",
    "load_temporal_mask",
    "render_detection",
    "render_temporal",
    "sample_temporal_params",
    "temporal_mask",
]

# class name -> (motion, reversed): a reversed class is rendered as the time reverse of its motion
TEMPORAL_CLASSES: dict[str, tuple[str, bool]] = {
    "moving right": ("translate_x", False),
    "moving left": ("translate_x", True),
    "moving down": ("translate_y", False),
    "moving up": ("translate_y", True),
    "rotating clockwise": ("rotate", False),
    "rotating counter-clockwise": ("rotate", True),
    "growing": ("scale", False),
    "shrinking": ("scale", True),
    "appearing": ("fade", False),
    "disappearing": ("fade", True),
    "brightening": ("light", False),
    "darkening": ("light", True),
    "static square": ("static_square", False),
    "static circle": ("static_circle", False),
}
_MOTION_SHAPES = ("triangle", "bar", "cross")  # squares and circles only ever appear in the static classes
_STATIC_COLOURS = {"static_square": (220.0, 50.0, 50.0), "static_circle": (50.0, 90.0, 230.0)}  # red, blue
DEFAULT_TEMPORAL_CLASSES = (
    "moving left",
    "moving right",
    "rotating clockwise",
    "rotating counter-clockwise",
    "growing",
    "shrinking",
    "appearing",
    "disappearing",
    "static square",
    "static circle",
)
DETECTION_ACTIONS = ("stand", "walk left", "walk right", "jump", "wave")  # ids 1..5
# x264's MB-tree made a few tiny clips differ between identical runs (measured); without it the
# bytes depend only on the pixels, so a seed gives identical videos.
_ENCODE = dict(
    codec="libx264", pix_fmt="yuv420p", crf=18, preset="veryfast", options={"x264-params": "mbtree=0"}
)


# --------------------------------------------------------------------------- drawing helpers
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, each (1, H, W) float32, ready to broadcast against (T, 1, 1)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    return yy[None], xx[None]


def _col(v: np.ndarray | float) -> np.ndarray:
    """(T,) per-frame parameter -> (T, 1, 1) for broadcasting over (T, H, W)."""
    return np.asarray(v, np.float32).reshape(-1, 1, 1)


def _shape_mask(shape: str, yy, xx, cy, cx, r, angle) -> np.ndarray:
    """Anti-aliased coverage (T, H, W) in [0, 1] of a shape of circumradius ``r`` px rotated by ``angle``."""
    cy, cx, r, angle = _col(cy), _col(cx), _col(r), _col(angle)
    dy, dx = yy - cy, xx - cx  # (T, H, W)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r  # shape-local coordinates, unit size
    if shape == "circle":
        d = np.sqrt(u * u + v * v) - 1.0
    elif shape == "square":
        d = np.maximum(np.abs(u), np.abs(v)) - 0.75
    elif shape == "triangle":  # equilateral, circumradius 1 (inradius 0.5)
        phis = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
        d = np.max([math.cos(p) * u + math.sin(p) * v for p in phis], axis=0) - 0.5
    elif shape == "bar":
        d = np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3)
    elif shape == "cross":  # two bars
        d = np.minimum(
            np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3), np.maximum(np.abs(v) - 1.0, np.abs(u) - 0.3)
        )
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - d * r, 0.0, 1.0)  # signed distance in px -> coverage


def _contrasting_colours(rng: np.random.Generator, n: int, min_dist: float = 110.0) -> np.ndarray:
    """Background + ``n`` foreground RGB colours, each at least ``min_dist`` from the background."""
    bg = rng.uniform(20, 235, 3)
    fgs = []
    while len(fgs) < n:
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - bg) >= min_dist:
            fgs.append(c)
    return np.stack([bg, *fgs]).astype(np.float32)  # (1 + n, 3)


def _background(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """Static (H, W, 3) background: a colour with a gentle random gradient."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = rng.uniform(-25, 25, 2)
    ramp = g[0] * (yy / h - 0.5) + g[1] * (xx / w - 0.5)  # (H, W)
    return colour[None, None, :] + ramp[..., None]


def _finish(frames: np.ndarray) -> np.ndarray:
    """float (T, H, W, 3) -> uint8, rounded (in place: the float buffer is scratch)."""
    frames += 0.5
    return np.clip(frames, 0, 255, out=frames).astype(np.uint8)


# --------------------------------------------------------------------------- temporal dataset
@dataclass(frozen=True)
class TemporalParams:
    """Latent parameters of one temporal video (everything random about it)."""

    shape: str
    colours: np.ndarray  # (2, 3): background, shape
    gradient: np.ndarray  # (2,) background ramp along y, x
    cy: float  # start centre, px
    cx: float
    r: float  # circumradius, px
    angle: float  # start angle, rad
    amount: float  # motion extent: px (translate), rad (rotate), scale factor (scale)
    drift: float  # small perpendicular motion, px
    fade: tuple[float, float]  # fade-in start / end (fraction of the clip)
    light: float  # brightness change for brighten/darken
    noise: float  # per-pixel noise std
    noise_seed: int


def sample_temporal_params(class_name: str, size: int, rng: np.random.Generator) -> TemporalParams:
    """Draw random appearance + motion parameters for a video of ``class_name`` (size x size)."""
    motion, _ = TEMPORAL_CLASSES[class_name]
    shape = (
        motion.removeprefix("static_") if motion.startswith("static_") else str(rng.choice(_MOTION_SHAPES))
    )
    r = size * rng.uniform(0.16, 0.24)
    amount = 0.0
    cy, cx = rng.uniform(r, size - r, 2)
    if motion in ("translate_x", "translate_y"):
        amount = size * rng.uniform(0.3, 0.45)
        start = rng.uniform(r, size - r - amount)
        cy, cx = (start, cx) if motion == "translate_y" else (cy, start)
    elif motion == "rotate":
        amount = rng.uniform(0.9, 1.4)  # 50-80 degrees: less than a cross's 90-degree symmetry
        r = size * rng.uniform(0.2, 0.28)
        cy, cx = rng.uniform(0.35 * size, 0.65 * size, 2)
    elif motion == "scale":
        amount = rng.uniform(2.0, 2.8)
        r = size * rng.uniform(0.07, 0.1)
        cy, cx = rng.uniform(r * amount, size - r * amount, 2)
    colours = _contrasting_colours(rng, 1)
    if (
        motion in _STATIC_COLOURS
    ):  # appearance-only classes: a fixed hue (jittered) on a contrasting background
        colours[1] = np.clip(np.array(_STATIC_COLOURS[motion]) + rng.uniform(-20, 20, 3), 0, 255)
        while np.linalg.norm(colours[0] - colours[1]) < 110:
            colours[0] = rng.uniform(20, 235, 3)
    return TemporalParams(
        shape=shape,
        colours=colours,
        gradient=rng.uniform(-25, 25, 2).astype(np.float32),
        cy=float(cy),
        cx=float(cx),
        r=float(r),
        angle=float(rng.uniform(0, 2 * np.pi)),
        amount=float(amount),
        drift=float(rng.uniform(-0.06, 0.06) * size),
        fade=(float(rng.uniform(0.0, 0.25)), float(rng.uniform(0.7, 1.0))),
        light=float(rng.uniform(60, 100)),
        noise=float(rng.uniform(1, 4)),
        noise_seed=int(rng.integers(2**31)),
    )


def _temporal_cover(motion: str, p: TemporalParams, num_frames: int, size: int):
    """Canonical (not reversed) shape coverage ``(T, H, W)`` in [0, 1] (fade included), the pixel
    grid and the per-frame brightness change ``(T,)``."""
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)  # t -> 1 - t is exactly frame reversal
    cy, cx = np.full_like(t, p.cy), np.full_like(t, p.cx)
    r, angle, alpha = np.full_like(t, p.r), np.full_like(t, p.angle), np.ones_like(t)
    light = np.zeros_like(t)
    if motion == "translate_x":
        cx, cy = p.cx + p.amount * t, p.cy + p.drift * t
    elif motion == "translate_y":
        cy, cx = p.cy + p.amount * t, p.cx + p.drift * t
    elif motion == "rotate":  # y points down, so a growing angle turns clockwise on screen
        angle = p.angle + p.amount * t
    elif motion == "scale":
        r = p.r * (1 + (p.amount - 1) * t)
    elif motion == "fade":
        alpha = np.clip((t - p.fade[0]) / (p.fade[1] - p.fade[0]), 0, 1)
    elif motion == "light":
        light = p.light * (t - 0.5)
    yy, xx = _grid(size, size)
    return _shape_mask(p.shape, yy, xx, cy, cx, r, angle) * _col(alpha), (yy, xx), light


def render_temporal(class_name: str, params: TemporalParams, num_frames: int, size: int) -> np.ndarray:
    """Render uint8 (T, H, W, 3). A reversed class is the canonical motion rendered, then flipped in time."""
    motion, reverse = TEMPORAL_CLASSES[class_name]
    p = params
    cover, (yy, xx), light = _temporal_cover(motion, p, num_frames, size)  # (T, H, W)
    bg = (
        p.colours[0]
        + p.gradient[0] * (yy[0, :, :, None] / size - 0.5)
        + p.gradient[1] * (xx[0, :, :, None] / size - 0.5)
    )  # (H, W, 3)
    frames = bg[None] + cover[..., None] * (p.colours[1] - bg[None])  # (T, H, W, 3)
    frames = frames + light[:, None, None, None]
    noise = np.random.default_rng(p.noise_seed).standard_normal((num_frames, size, size, 1), np.float32)
    frames = _finish(frames + p.noise * noise)  # (T, H, W, 3)
    return frames[::-1].copy() if reverse else frames


def temporal_mask(
    class_name: str, params: TemporalParams, num_frames: int, size: int, threshold: float = 0.5
) -> np.ndarray:
    """Mask ``(T, H, W)`` bool of the shape in the video :func:`render_temporal` draws from the same
    arguments: pixels where the shape's coverage (anti-aliasing and fade included) is at least
    ``threshold``, so a faded-out shape has an empty mask."""
    motion, reverse = TEMPORAL_CLASSES[class_name]
    cover = _temporal_cover(motion, params, num_frames, size)[0] >= threshold  # (T, H, W)
    return cover[::-1].copy() if reverse else cover


def load_temporal_mask(data_dir: str | Path, video: str | Path) -> np.ndarray:
    """The shape mask ``(T, H, W)`` bool of one video of a :func:`generate_temporal` dataset,
    recomputed from ``synth.json``, the video's label (``train.txt`` / ``val.txt``) and its per-video
    seed (``v<i>.mp4`` was drawn from ``default_rng([seed, i])``)."""
    root = Path(data_dir)
    info_path = root / "synth.json"
    if not info_path.is_file():
        raise DatasetError(f"{info_path}: no such file; pass the folder `kinetix data synth` wrote")
    info = json.loads(info_path.read_text())
    stem = Path(video).stem
    if info.get("kind") != "temporal" or not stem.startswith("v") or not stem[1:].isdigit():
        raise DatasetError(f"{video}: not a video of the temporal synthetic dataset in {root}")
    rel = f"videos/{stem}.mp4"
    label = None
    for split in ("train", "val"):
        lst = root / f"{split}.txt"
        for line in lst.read_text().splitlines() if lst.is_file() else []:
            parts = line.split()
            if len(parts) == 2 and parts[0] == rel:
                label = int(parts[1])
    if label is None:
        raise DatasetError(f"{video}: not listed in {root}/train.txt or val.txt")
    size, name = int(info["params"]["size"]), info["classes"][label]
    params = sample_temporal_params(name, size, np.random.default_rng([int(info["seed"]), int(stem[1:])]))
    return temporal_mask(name, params, int(info["num_frames"]), size)


def _reversed_pairs(classes: list[str]) -> list[list[int]]:
    pairs = []
    for i, a in enumerate(classes):
        for j, b in enumerate(classes):
            ma, ra = TEMPORAL_CLASSES[a]
            mb, rb = TEMPORAL_CLASSES[b]
            if i < j and ma == mb and ra != rb:
                pairs.append([i, j])
    return pairs


def _prepare_out(out: Path) -> None:
    """Refuse to write into a folder holding anything but an earlier synthetic dataset."""
    if out.exists() and any(out.iterdir()) and not (out / "synth.json").exists():
        raise DatasetError(
            f"{out}: folder is not empty and holds no synthetic dataset (no synth.json); "
            "choose a new or empty --out folder so that nothing of yours is overwritten"
        )
    out.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def generate_temporal(
    out_dir: str | Path,
    num_videos: int = 300,
    size: int = 64,
    fps: float = 8.0,
    seconds: float = 2.0,
    seed: int = 0,
    *,
    classes: list[str] | tuple[str, ...] = DEFAULT_TEMPORAL_CLASSES,
    val_fraction: float = 0.2,
) -> dict:
    """Write the time-reversal dataset to ``out_dir`` (layout in the module docstring) -> summary dict.

    Classes are balanced (video ``i`` has class ``i % num_classes`` before shuffling), the split is
    random with ``val_fraction`` of each class in ``val``.
    """
    classes = list(classes)
    unknown = [c for c in classes if c not in TEMPORAL_CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; choose from {list(TEMPORAL_CLASSES)}")
    if num_videos < 1 or size < 16:
        raise ValueError(f"need num_videos >= 1 and size >= 16, got {num_videos}, {size}")
    out = Path(out_dir)
    _prepare_out(out)
    num_frames = max(2, round(fps * seconds))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_videos) % len(classes))  # (N,) balanced classes
    is_val = np.zeros(num_videos, bool)
    for c in range(len(classes)):  # the same val fraction in every class
        members = np.flatnonzero(labels == c)
        is_val[members[: round(len(members) * val_fraction)]] = True
    split_rows: dict[str, list] = {"train": [], "val": []}
    list_rows: dict[str, list] = {"train": [], "val": []}
    for i in range(num_videos):
        name = classes[labels[i]]
        vid = f"v{i:05d}"
        params = sample_temporal_params(name, size, np.random.default_rng([seed, i]))
        frames = render_temporal(name, params, num_frames, size)
        write_video(out / "videos" / f"{vid}.mp4", frames, fps=fps, gop=max(1, round(fps)), **_ENCODE)
        split = "val" if is_val[i] else "train"
        split_rows[split].append([name, vid, 0, seconds, split])
        list_rows[split].append(f"videos/{vid}.mp4 {labels[i]}")
    for split in ("train", "val"):
        header = ["label", "youtube_id", "time_start", "time_end", "split"]
        _write_text(out / f"{split}.csv", _csv_text(header, split_rows[split]))
        _write_text(out / f"{split}.txt", "".join(f"{r}\n" for r in list_rows[split]))
    _write_text(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    summary = {
        "kind": "temporal",
        "classes": classes,
        "reversed_pairs": _reversed_pairs(classes),
        "appearance_only": [i for i, c in enumerate(classes) if TEMPORAL_CLASSES[c][0].startswith("static_")],
        "params": {
            "num_videos": num_videos,
            "size": size,
            "fps": fps,
            "seconds": seconds,
            "val_fraction": val_fraction,
        },
        "seed": seed,
        "num_frames": num_frames,
        "counts": {
            "videos": num_videos,
            "train": len(list_rows["train"]),
            "val": len(list_rows["val"]),
            "per_class": np.bincount(labels, minlength=len(classes)).tolist(),
        },
    }
    _write_text(out / "synth.json", json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- detection dataset
def _actor_masks(actor: dict, t: np.ndarray, yy, xx) -> tuple[np.ndarray, np.ndarray]:
    """Body, head and arm masks, each (T, H, W) bool, of one figure at times ``t`` (seconds)."""
    cx = actor["x0"] + actor["vx"] * t  # (T,)
    hop = actor["hop"] * np.abs(np.sin(np.pi * actor["hop_freq"] * t + actor["phase"]))  # jump: up is -y
    feet = actor["feet"] - hop
    bh, bw, head = actor["body_h"], actor["body_w"], actor["head_r"]
    top = feet - bh
    body = (np.abs(xx - _col(cx)) <= bw / 2) & (yy >= _col(top)) & (yy <= _col(feet))  # (T, H, W)
    head_cy = top - head * 1.15  # a small neck gap
    headm = (yy - _col(head_cy)) ** 2 + (xx - _col(cx)) ** 2 <= head * head
    # arm: a bar from the shoulder; waving swings it overhead, otherwise it hangs down
    if actor["wave"]:
        angle = -np.pi / 2 + 0.9 * np.sin(2 * np.pi * actor["wave_freq"] * t + actor["phase"])
    else:
        angle = np.full_like(t, np.pi / 2 - 0.25)
    sx, sy = cx + actor["side"] * bw / 2, top + 0.12 * bh  # shoulder (T,)
    dx, dy = xx - _col(sx), yy - _col(sy)
    u = dx * _col(np.cos(angle)) + dy * _col(np.sin(angle))  # along the arm
    v = -dx * _col(np.sin(angle)) + dy * _col(np.cos(angle))
    arm = (u >= 0) & (u <= actor["arm_len"]) & (np.abs(v) <= max(1.0, bw * 0.18))
    return body, headm, arm


def _sample_actor(
    rng: np.random.Generator, h: int, w: int, seconds: float, lane: tuple[float, float]
) -> dict:
    """Random figure: size, colour slot, start x (inside its lane when it fits), motion and actions."""
    body_h = h * rng.uniform(0.3, 0.42)
    body_w = body_h * rng.uniform(0.28, 0.38)
    head_r, arm_len = body_w * 0.45, body_h * 0.55
    m = body_w / 2 + arm_len * 0.8 + 1  # half-width with a raised arm: stays inside the frame
    lo, hi = m, w - m
    a, b = max(lo, lane[0] * w), min(hi, lane[1] * w)
    x0 = rng.uniform(a, b) if b > a else rng.uniform(lo, hi)
    loco = int(rng.integers(3))  # 0 stand, 1 walk left, 2 walk right
    if loco:
        room = {1: x0 - lo, 2: hi - x0}
        if room[loco] < 0.25 * (hi - lo):  # too close to the edge: walk the other way
            loco = 3 - loco
        travel = rng.uniform(0.5, 0.95) * room[loco]
    vx = {0: 0.0, 1: -1.0, 2: 1.0}[loco] * (travel if loco else 0.0) / seconds
    jump, wave = bool(rng.random() < 0.35), bool(rng.random() < 0.4)
    hop = h * rng.uniform(0.08, 0.14) if jump else 0.0
    feet_lo, feet_hi = (
        body_h + max(2.15 * head_r, 0.45 * body_h) + hop + 2,
        h - 2,
    )  # head / raised arm in frame
    return {
        "x0": float(x0),
        "vx": float(vx),
        "feet": float(rng.uniform(feet_lo, feet_hi)) if feet_hi > feet_lo else float(feet_hi),
        "body_h": float(body_h),
        "body_w": float(body_w),
        "head_r": float(head_r),
        "arm_len": float(arm_len),
        "side": float(rng.choice([-1.0, 1.0])),
        "hop": float(hop),
        "hop_freq": float(rng.uniform(1.2, 1.8)),  # not a whole/half Hz: 1 s keyframes see different heights
        "wave": wave,
        "wave_freq": float(rng.uniform(1.5, 2.5)),
        "phase": float(rng.uniform(0, np.pi)),
        "actions": [loco + 1] + ([4] if jump else []) + ([5] if wave else []),  # 1-based action ids
    }


def render_detection(
    actors: list[dict],
    colours: np.ndarray,
    gradient_rng_seed: int,
    h: int,
    w: int,
    num_frames: int,
    fps: float,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render uint8 (T, H, W, 3) and each actor's coverage mask (T, H, W) bool."""
    yy, xx = _grid(h, w)
    t = np.arange(num_frames, dtype=np.float32) / fps  # (T,) seconds
    rng = np.random.default_rng(gradient_rng_seed)
    bg = _background(rng, h, w, colours[0])  # (H, W, 3)
    frames = np.broadcast_to(bg, (num_frames, h, w, 3)).copy()  # (T, H, W, 3)
    masks = []
    for k, actor in enumerate(actors):
        body, head, arm = _actor_masks(actor, t, yy, xx)
        frames[body] = colours[1 + k]
        frames[head | arm] = colours[1 + k] * 0.7 + 30  # a shade of the body colour
        masks.append(body | head | arm)
    frames += 3.0 * rng.standard_normal((num_frames, h, w, 1), np.float32)
    return _finish(frames), masks


def _box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Pixel box (x1, y1, x2, y2) of a (H, W) mask, edges at pixel borders; None if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def generate_detection(
    out_dir: str | Path,
    num_videos: int = 40,
    size: tuple[int, int] = (96, 128),
    fps: float = 10.0,
    seconds: float = 6.0,
    seed: int = 0,
    *,
    max_actors: int = 3,
    val_fraction: float = 0.25,
) -> dict:
    """Write an AVA-format detection dataset to ``out_dir`` (layout in the module docstring) -> summary."""
    h, w = size
    if num_videos < 1 or min(h, w) < 32 or seconds < 3:
        raise ValueError(
            f"need num_videos >= 1, size >= 32 px and seconds >= 3, got {num_videos}, {size}, {seconds}"
        )
    out = Path(out_dir)
    _prepare_out(out)
    num_frames = round(fps * seconds)
    timestamps = list(range(1, int(seconds - 1) + 1))  # keyframes at 1 s .. seconds-1 s
    rng = np.random.default_rng(seed)
    is_val = np.zeros(num_videos, bool)
    is_val[rng.permutation(num_videos)[: round(num_videos * val_fraction)]] = True
    rows: dict[str, list] = {"train": [], "val": []}
    num_actors_total, action_counts = 0, np.zeros(len(DETECTION_ACTIONS), int)
    for i in range(num_videos):
        vrng = np.random.default_rng([seed, i])
        vid = f"d{i:05d}"
        n = int(vrng.integers(1, max_actors + 1))
        slots = [(k / n, (k + 1) / n) for k in vrng.permutation(n)]  # one horizontal lane per actor
        actors = [_sample_actor(vrng, h, w, seconds, s) for s in slots]
        colours = _contrasting_colours(vrng, n)
        frames, masks = render_detection(actors, colours, int(vrng.integers(2**31)), h, w, num_frames, fps)
        write_video(out / "videos" / f"{vid}.mp4", frames, fps=fps, gop=max(1, round(fps)), **_ENCODE)
        split = "val" if is_val[i] else "train"
        num_actors_total += n
        for ts in timestamps:
            f = min(round(ts * fps), num_frames - 1)
            for pid, (actor, mask) in enumerate(zip(actors, masks)):
                box = _box(mask[f])
                if box is None:
                    continue
                x1, y1, x2, y2 = box[0] / w, box[1] / h, box[2] / w, box[3] / h
                for a in actor["actions"]:
                    rows[split].append([vid, ts, f"{x1:.3f}", f"{y1:.3f}", f"{x2:.3f}", f"{y2:.3f}", a, pid])
                    action_counts[a - 1] += 1
    ann = out / "annotations"
    for split in ("train", "val"):
        _write_text(ann / f"{split}.csv", _csv_text([], rows[split]))
    pbtxt = "".join(
        f'item {{\n  name: "{name}"\n  id: {k + 1}\n}}\n' for k, name in enumerate(DETECTION_ACTIONS)
    )
    _write_text(ann / "label_map.pbtxt", pbtxt)
    _write_text(ann / "excluded_timestamps.csv", "")
    summary = {
        "kind": "detection",
        "classes": list(DETECTION_ACTIONS),
        "action_ids": {name: k + 1 for k, name in enumerate(DETECTION_ACTIONS)},
        "params": {
            "num_videos": num_videos,
            "size": [h, w],
            "fps": fps,
            "seconds": seconds,
            "max_actors": max_actors,
            "val_fraction": val_fraction,
        },
        "seed": seed,
        "num_frames": num_frames,
        "timestamps": timestamps,
        "counts": {
            "videos": num_videos,
            "train_videos": int((~is_val).sum()),
            "val_videos": int(is_val.sum()),
            "actors": num_actors_total,
            "train_rows": len(rows["train"]),
            "val_rows": len(rows["val"]),
            "per_action": action_counts.tolist(),
        },
    }
    _write_text(out / "synth.json", json.dumps(summary, indent=2) + "\n")
    return summary


def generate(kind: str, out_dir: str | Path, **kwargs) -> dict:
    """``generate("temporal" | "detection", out_dir, **kwargs)`` -> summary dict."""
    if kind == "temporal":
        return generate_temporal(out_dir, **kwargs)
    if kind == "detection":
        return generate_detection(out_dir, **kwargs)
    raise ValueError(f"kind must be 'temporal' or 'detection', got {kind!r}")
