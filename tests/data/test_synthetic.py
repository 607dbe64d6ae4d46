"""Synthetic datasets: layout, determinism, the time-reversal property, boxes that fit the drawn actors."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest

from kinetix.data.io import VideoReader
from kinetix.data.synthetic import (
    DETECTION_ACTIONS,
    TEMPORAL_CLASSES,
    generate,
    load_temporal_mask,
    render_temporal,
    sample_temporal_params,
    temporal_mask,
)
from kinetix.errors import DatasetError

SMALL_T = dict(num_videos=20, size=32, fps=8, seconds=1.0)
SMALL_D = dict(num_videos=4, size=(64, 96), fps=8, seconds=4.0)


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    out = tmp_path_factory.mktemp("temporal")
    return out, generate("temporal", out, seed=3, **SMALL_T)


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    out = tmp_path_factory.mktemp("detection")
    return out, generate("detection", out, seed=5, **SMALL_D)


# ----------------------------------------------------------------------------- temporal
def test_temporal_layout(temporal):
    out, summary = temporal
    classes = (out / "classes.txt").read_text().splitlines()
    meta = json.loads((out / "synth.json").read_text())
    assert meta == summary and meta["classes"] == classes and meta["seed"] == 3
    assert meta["counts"]["train"] + meta["counts"]["val"] == 20
    for i, j in meta["reversed_pairs"]:  # pairs share a motion and differ in direction
        assert TEMPORAL_CLASSES[classes[i]][0] == TEMPORAL_CLASSES[classes[j]][0]
    assert len(meta["reversed_pairs"]) == 4 and len(meta["appearance_only"]) == 2
    for split in ("train", "val"):
        rows = list(csv.reader((out / f"{split}.csv").open()))
        assert rows[0] == ["label", "youtube_id", "time_start", "time_end", "split"]
        lines = (out / f"{split}.txt").read_text().splitlines()
        assert len(lines) == len(rows) - 1 == meta["counts"][split]
        for (label, vid, t0, t1, sp), line in zip(rows[1:], lines):
            path, idx = line.split()
            assert path == f"videos/{vid}.mp4" and classes[int(idx)] == label and sp == split
            assert (float(t0), float(t1)) == (0.0, 1.0)
    with VideoReader(out / "videos" / "v00000.mp4") as r:
        assert (r.num_frames, r.height, r.width, r.fps) == (8, 32, 32, 8.0)


def test_temporal_is_deterministic(temporal, tmp_path):
    out, _ = temporal
    again = tmp_path / "again"
    generate("temporal", again, seed=3, **SMALL_T)
    for name in ("train.csv", "val.csv", "train.txt", "val.txt", "classes.txt", "synth.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    for vid in ("v00000", "v00007", "v00019"):
        a = VideoReader(out / "videos" / f"{vid}.mp4").get_frames(range(8))
        b = VideoReader(again / "videos" / f"{vid}.mp4").get_frames(range(8))
        assert np.array_equal(a.numpy(), b.numpy())
    generate("temporal", tmp_path / "other", seed=4, **SMALL_T)
    assert (tmp_path / "other" / "train.txt").read_bytes() != (out / "train.txt").read_bytes()


@pytest.mark.parametrize("pair", [("moving right", "moving left"), ("moving down", "moving up"),
                                  ("rotating clockwise", "rotating counter-clockwise"), ("growing", "shrinking"),
                                  ("appearing", "disappearing"), ("brightening", "darkening")])  # fmt: skip
def test_reversed_pair_is_the_exact_time_reverse(pair):
    a, b = pair
    for seed in range(3):
        params = sample_temporal_params(a, 32, np.random.default_rng(seed))
        fa, fb = render_temporal(a, params, 9, 32), render_temporal(b, params, 9, 32)
        assert fa.shape == (9, 32, 32, 3) and fa.dtype == np.uint8
        np.testing.assert_array_equal(fb, fa[::-1])
        assert not np.array_equal(fa, fb)  # and the motion is real


def test_appearance_only_shapes_never_move():
    """Squares and circles are drawn only by the static classes, so one frame identifies those."""
    rng = np.random.default_rng(0)
    shapes = {
        name: {sample_temporal_params(name, 48, rng).shape for _ in range(20)} for name in TEMPORAL_CLASSES
    }
    static = {s for name, ss in shapes.items() if name.startswith("static") for s in ss}
    moving = {s for name, ss in shapes.items() if not name.startswith("static") for s in ss}
    assert static == {"square", "circle"} and not static & moving


def _foreground(frames, params):
    """(T, H, W) weight of pixels that look like the shape colour rather than the background."""
    f = frames.astype(np.float32)
    d_bg = np.linalg.norm(f - params.colours[0], axis=-1)
    d_fg = np.linalg.norm(f - params.colours[1], axis=-1)
    return (d_fg < d_bg).astype(np.float32)


def test_motion_classes_move_the_way_their_names_say():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
    for _ in range(3):
        p = sample_temporal_params("moving right", 48, rng)
        m = _foreground(render_temporal("moving right", p, 6, 48), p)  # (T, H, W)
        cx = (m * xx).sum((1, 2)) / m.sum((1, 2))
        assert np.all(np.diff(cx) > 0)
        p = sample_temporal_params("growing", 48, rng)
        area = _foreground(render_temporal("growing", p, 6, 48), p).sum((1, 2))
        assert np.all(np.diff(area) > 0)
        p = dataclasses.replace(sample_temporal_params("rotating clockwise", 48, rng), shape="bar")
        m = _foreground(render_temporal("rotating clockwise", p, 6, 48), p)
        w = m / m.sum((1, 2), keepdims=True)
        mx, my = (w * xx).sum((1, 2), keepdims=True), (w * yy).sum((1, 2), keepdims=True)
        mu20, mu02 = (w * (xx - mx) ** 2).sum((1, 2)), (w * (yy - my) ** 2).sum((1, 2))
        mu11 = (w * (xx - mx) * (yy - my)).sum((1, 2))
        theta = np.unwrap(2 * 0.5 * np.arctan2(2 * mu11, mu20 - mu02)) / 2  # axis angle, y down
        assert np.all(np.diff(theta) > 0)  # angle grows with y pointing down = clockwise on screen


def test_decoded_reversed_video_matches_partner_render(temporal):
    out, summary = temporal
    classes = summary["classes"]
    rows = [r for split in ("train", "val") for r in csv.reader((out / f"{split}.csv").open())][1:]
    label, vid = next((r[0], r[1]) for r in rows if r[0] == "moving left")
    i = int(vid[1:])
    params = sample_temporal_params(label, 32, np.random.default_rng([3, i]))  # the generator's seeding
    partner = classes[next(p[1 - p.index(classes.index(label))] for p in summary["reversed_pairs"]
                           if classes.index(label) in p)]  # fmt: skip
    expected = render_temporal(partner, params, 8, 32)[::-1].astype(np.float32)
    decoded = VideoReader(out / "videos" / f"{vid}.mp4").get_frames(range(8)).numpy().astype(np.float32)
    assert np.abs(decoded - expected).mean() < 4.0  # H.264 at crf 18 plus the noise
    assert np.abs(decoded - expected[::-1]).mean() > np.abs(decoded - expected).mean() + 2


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        generate("nope", tmp_path)
    with pytest.raises(ValueError, match="unknown classes"):
        generate("temporal", tmp_path, classes=["dancing"])
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not empty"):  # never overwrite a user's folder
        generate("temporal", tmp_path, num_videos=2, size=16, seconds=1)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_regenerating_into_a_synthetic_folder_is_allowed(temporal):
    out, summary = temporal
    assert generate("temporal", out, seed=3, **SMALL_T) == summary


@pytest.mark.parametrize("name", sorted(TEMPORAL_CLASSES))
def test_temporal_mask_matches_the_rendered_pixels(name):
    """The mask is where the shape shows: the render differs from a render of the same parameters
    with the shape painted in the background colour by more than half the colour contrast."""
    size, T = 48, 9
    params = sample_temporal_params(name, size, np.random.default_rng(11))
    frames = render_temporal(name, params, T, size).astype(np.int32)
    hidden = params.colours.copy()
    hidden[1] = hidden[0]
    background = render_temporal(name, dataclasses.replace(params, colours=hidden), T, size).astype(np.int32)
    contrast = np.abs(params.colours[1] - params.colours[0]).sum()
    shown = np.abs(frames - background).sum(-1) > 0.5 * contrast  # (T, H, W)
    mask = temporal_mask(name, params, T, size)
    assert mask.shape == (T, size, size) and mask.dtype == bool
    assert (mask == shown).mean() > 0.995, (mask != shown).sum()
    assert mask.any()  # every class shows its shape in some frame (fades: not in all)
    if TEMPORAL_CLASSES[name][0] == "fade":
        areas = mask.sum((1, 2))
        assert areas[0 if name == "appearing" else -1] == 0 < areas[-1 if name == "appearing" else 0]


def test_load_temporal_mask_matches_the_decoded_video(temporal):
    out, _ = temporal
    for line in (out / "train.txt").read_text().splitlines()[:4]:
        rel = line.split()[0]
        mask = load_temporal_mask(out, out / rel)  # (T, H, W)
        with VideoReader(out / rel) as r:
            frames = r.get_frames(np.arange(r.num_frames)).numpy().astype(np.float32)
        assert mask.shape == frames.shape[:3]
        agree = []
        for f, m in zip(frames, mask):
            if m.sum() < 4 or (~m).sum() < 4:
                continue
            fg, bg = np.median(f[m], 0), np.median(f[~m], 0)  # (3,) each
            nearer_fg = np.linalg.norm(f - fg, axis=-1) < np.linalg.norm(f - bg, axis=-1)
            agree.append((nearer_fg == m).mean())
        assert agree and min(agree) > 0.95, agree
    with pytest.raises(DatasetError, match="not a video"):
        load_temporal_mask(out, "elsewhere/clip.mp4")
    with pytest.raises(DatasetError, match=r"synth\.json"):
        load_temporal_mask(out / "videos", out / rel)


# ----------------------------------------------------------------------------- detection
def _rows(out, split):
    return [line.split(",") for line in (out / "annotations" / f"{split}.csv").read_text().splitlines()]


def test_detection_layout_and_determinism(detection, tmp_path):
    out, summary = detection
    ann = out / "annotations"
    assert (ann / "excluded_timestamps.csv").exists()
    items = re.findall(r'item \{\s*name: "([^"]+)"\s*id: (\d+)\s*\}', (ann / "label_map.pbtxt").read_text())
    assert [(n, int(i)) for n, i in items] == [(n, k + 1) for k, n in enumerate(DETECTION_ACTIONS)]
    rows = _rows(out, "train") + _rows(out, "val")
    assert len(rows) == summary["counts"]["train_rows"] + summary["counts"]["val_rows"] > 0
    for vid, ts, *box, action, pid in rows:
        x1, y1, x2, y2 = map(float, box)
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        assert int(ts) in (1, 2, 3) and 1 <= int(action) <= 5 and int(pid) >= 0
        assert (out / "videos" / f"{vid}.mp4").exists()
    with VideoReader(out / "videos" / "d00000.mp4") as r:
        assert (r.num_frames, r.height, r.width) == (32, 64, 96)
    again = tmp_path / "again"
    generate("detection", again, seed=5, **SMALL_D)
    for name in ("annotations/train.csv", "annotations/val.csv", "annotations/label_map.pbtxt", "synth.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    a = VideoReader(out / "videos" / "d00001.mp4").get_frames([8, 16])
    assert np.array_equal(a.numpy(), VideoReader(again / "videos" / "d00001.mp4").get_frames([8, 16]).numpy())


def test_detection_actions_follow_the_motion(detection):
    out, _ = detection
    per_person: dict[tuple, dict] = {}
    for vid, ts, x1, _y1, x2, y2, action, pid in _rows(out, "train") + _rows(out, "val"):
        p = per_person.setdefault((vid, pid), {"actions": set(), "cx": {}, "feet": {}})
        p["actions"].add(int(action))
        p["cx"][int(ts)] = (float(x1) + float(x2)) / 2
        p["feet"][int(ts)] = float(y2)
    assert per_person
    for p in per_person.values():
        loco = p["actions"] & {1, 2, 3}
        assert len(loco) == 1  # exactly one of stand / walk left / walk right
        feet = np.array(list(p["feet"].values()))
        assert (np.ptp(feet) > 0) == (4 in p["actions"])  # only jumpers leave the ground
        cx = np.array([p["cx"][t] for t in sorted(p["cx"])])
        if 5 in p["actions"]:  # a waving arm moves the box edges; the body still walks or stands
            continue
        if loco == {1}:
            assert np.ptp(cx) < 0.02
        elif loco == {2}:
            assert np.all(np.diff(cx) < 0)
        else:
            assert np.all(np.diff(cx) > 0)


def test_detection_boxes_fit_the_drawn_actors(detection):
    out, summary = detection
    h, w = summary["params"]["size"]
    fps = summary["params"]["fps"]
    boxes: dict[tuple, set] = {}
    for vid, ts, x1, y1, x2, y2, _a, _pid in _rows(out, "train") + _rows(out, "val"):
        boxes.setdefault((vid, int(ts)), set()).add(
            (float(x1) * w, float(y1) * h, float(x2) * w, float(y2) * h)
        )
    checked = 0
    for (vid, ts), bs in boxes.items():
        frame = VideoReader(out / "videos" / f"{vid}.mp4").get_frames([round(ts * fps)])[0].numpy()
        frame = frame.astype(np.float32)
        covered = np.zeros((h, w), bool)
        for x1, y1, x2, y2 in bs:
            covered[round(y1) : round(y2), round(x1) : round(x2)] = True
        bg = np.median(frame[~covered], axis=0)  # (3,) the background away from every box
        fg = np.linalg.norm(frame - bg, axis=-1) > 45  # (H, W) actor pixels
        border = np.ones((h, w), bool)
        border[2:-2, 2:-2] = False
        grown = np.zeros_like(covered)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                grown |= np.roll(np.roll(covered, dy, 0), dx, 1)
        outside = ~grown & ~border  # pixels more than 2 px away from every box and the frame edge
        assert fg[outside].mean() < 0.01  # nothing drawn outside the boxes (gradient < threshold)
        for x1, y1, x2, y2 in bs:
            box = fg[round(y1) : round(y2), round(x1) : round(x2)]
            assert box.mean() > 0.2  # the box holds an actor...
            # ...and is tight: actor pixels within 1 px of each edge
            assert box[:2].any() and box[-2:].any() and box[:, :2].any() and box[:, -2:].any()
            checked += 1
    assert checked >= summary["counts"]["actors"]
