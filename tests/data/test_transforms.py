"""Transforms: properties against explicit slicing, rendered masks and independent formulas."""

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kinetix.data import transforms as T


def _coord_clip(t=3, h=40, w=56):
    """uint8 (t, h, w, 3) whose pixels encode (y, x, frame): output pixels reveal where they came from."""
    y = torch.arange(h).view(1, h, 1).expand(t, h, w)
    x = torch.arange(w).view(1, 1, w).expand(t, h, w)
    f = torch.arange(t).view(t, 1, 1).expand(t, h, w)
    return torch.stack([y, x, f], -1).to(torch.uint8)


def _random_clip(t=4, h=36, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), generator=g, dtype=torch.uint8)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_twice_is_identity_and_swaps_labels():
    clip = _random_clip()
    boxes = torch.tensor([[3.0, 4.0, 20.0, 30.0], [0.0, 0.0, 48.0, 36.0]])
    flip = T.RandomHorizontalFlip(p=1.0, label_map={86: 87, 87: 86})
    once, tgt = flip(clip, {"label": 86, "boxes": boxes})
    assert torch.equal(once, clip.flip(2)) and tgt["label"] == 87
    assert torch.allclose(tgt["boxes"][0], torch.tensor([28.0, 4.0, 45.0, 30.0]))
    twice, tgt2 = flip(once, tgt)
    assert torch.equal(twice, clip) and tgt2["label"] == 86 and torch.equal(tgt2["boxes"], boxes)
    _, tgt3 = flip(clip, {"label": 5})
    assert tgt3["label"] == 5  # not in the map: unchanged
    assert T.RandomHorizontalFlip(p=0.0)(clip, None)[0] is clip


def test_center_and_random_crop_equal_explicit_slicing():
    clip = _coord_clip()
    out, _ = T.CenterCrop((20, 30))(clip)
    top, left = round((40 - 20) / 2), round((56 - 30) / 2)
    assert torch.equal(out, clip[:, top : top + 20, left : left + 30])
    seen = set()
    for seed in range(20):
        out, _ = T.RandomCrop(24)(clip, None, _gen(seed))
        top, left = int(out[0, 0, 0, 0]), int(out[0, 0, 0, 1])
        assert torch.equal(out, clip[:, top : top + 24, left : left + 24])
        seen.add((top, left))
    assert len(seen) > 5  # really random


def test_three_and_ten_crop_match_official_offsets():
    clip = _coord_clip(t=2, h=40, w=64)
    s = 32
    ws, hs = (64 - s) // 4, (40 - s) // 4
    three, _ = T.ThreeCrop(s)(clip)
    expected = [(2 * hs, 0), (2 * hs, 4 * ws), (2 * hs, 2 * ws)]  # left, right, centre
    assert three.shape == (3, 2, s, s, 3)
    for v, (y, x) in zip(three, expected):
        assert torch.equal(v, clip[:, y : y + s, x : x + s])
    portrait = _coord_clip(t=2, h=64, w=40)
    three_p, _ = T.ThreeCrop(s)(portrait)
    assert [int(v[0, 0, 0, 0]) for v in three_p] == [0, 4 * ws, 2 * ws]  # along the long (vertical) side
    ten, _ = T.TenCrop(s)(clip)
    corners = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    assert ten.shape == (10, 2, s, s, 3)
    for i, (x, y) in enumerate(corners):
        ref = clip[:, y : y + s, x : x + s]
        assert torch.equal(ten[2 * i], ref) and torch.equal(ten[2 * i + 1], ref.flip(2))


def test_multiscale_offsets_match_official_list():
    # Written out by hand from TSM's GroupMultiScaleCrop.fill_fix_offset(more_fix_crop=True).
    W, H, cw, ch = 340, 256, 224, 192
    ws, hs = 29, 16
    official = [
        (0, 0),
        (4 * ws, 0),
        (0, 4 * hs),
        (4 * ws, 4 * hs),
        (2 * ws, 2 * hs),
        (0, 2 * hs),
        (4 * ws, 2 * hs),
        (2 * ws, 4 * hs),
        (2 * ws, 0),
        (ws, hs),
        (3 * ws, hs),
        (ws, 3 * hs),
        (3 * ws, 3 * hs),
    ]
    assert T.multiscale_offsets(W, H, cw, ch) == official
    assert T.multiscale_offsets(W, H, cw, ch, more=False) == official[:5]
    # crop sizes: int(256 * s) = 256, 224, 192, 168; pairs at most one scale step apart
    pairs = T.MultiScaleCrop(224).crop_pairs(256, 340)
    sizes = [256, 224, 192, 168]
    expected = {(sizes[j], sizes[i]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    assert set(pairs) == expected and len(pairs) == 10
    # sizes within 2 px of the output are snapped to it: int(250*.875)=218 stays, int(256)=256 -> 256
    assert (226, 226) in T.MultiScaleCrop(226).crop_pairs(256, 300)  # int(256*.875)=224 snaps to 226


def test_multiscale_crop_samples_only_official_crops_and_resizes():
    msc = T.MultiScaleCrop(32)
    H, W = 48, 64
    allowed = set()
    for cw, ch in msc.crop_pairs(H, W):
        allowed |= {(y, x, ch, cw) for x, y in T.multiscale_offsets(W, H, cw, ch)}
    drawn = {msc.get_params(H, W, _gen(s)) for s in range(300)}
    assert drawn <= allowed and len(drawn) > 30
    clip = _random_clip(t=3, h=H, w=W)
    out, _ = msc(clip, None, _gen(7))
    top, left, h, w = msc.get_params(H, W, _gen(7))
    assert torch.equal(out, T.resize(clip[:, top : top + h, left : left + w], (32, 32)))


def test_random_resized_crop_is_crop_then_resize():
    rrc = T.RandomResizedCrop(24, scale=(0.2, 1.0))
    clip = _random_clip(t=2, h=40, w=50)
    for seed in range(5):
        top, left, h, w = rrc.get_params(40, 50, _gen(seed))
        assert 0 <= top <= 40 - h and 0 <= left <= 50 - w and h * w >= 0.2 * 40 * 50 * 0.8
        out, _ = rrc(clip, None, _gen(seed))
        assert torch.equal(out, T.resize(clip[:, top : top + h, left : left + w], (24, 24)))


def test_resize_matches_float_reference_and_short_side():
    clip = _random_clip(t=2, h=30, w=50)
    out = T.resize(clip, (18, 30))
    ref = F.interpolate(clip.permute(0, 3, 1, 2).float(), (18, 30), mode="bilinear", antialias=True)
    assert (out.permute(0, 3, 1, 2).float() - ref.round()).abs().max() <= 1
    res, _ = T.ShortSideResize(20)(clip)
    assert res.shape == (2, 20, 33, 3)
    assert T.ShortSideResize(30)(clip)[0] is clip  # already the right size: no work


@pytest.mark.parametrize(
    "transform",
    [
        T.RandomResizedCrop(24),
        T.MultiScaleCrop(24),
        T.RandomHorizontalFlip(0.5),
        T.ColorJitter(0.4, 0.4, 0.4, 0.1),
        T.RandAugment(3, 9),
        T.RandomErasing(1.0),
        T.RandomGrayscale(0.5),
        T.train_transform(24, (0.5,) * 3, (0.5,) * 3, randaugment=(2, 9), erase_prob=0.5, color_jitter=0.4),
    ],
    ids=lambda t: type(t).__name__,
)
def test_same_random_parameters_for_every_frame(transform):
    frame = _random_clip(t=1, h=40, w=52)
    clip = frame.expand(5, -1, -1, -1).contiguous()
    for seed in range(6):
        out, _ = transform(clip, None, _gen(seed))
        if out.dtype == torch.uint8:
            assert torch.equal(out, out[:1].expand_as(out)), seed
        else:  # normalised (C, T, H, W)
            assert torch.equal(out, out[:, :1].expand_as(out)), seed
        again, _ = transform(clip, None, _gen(seed))
        assert torch.equal(out, again)  # deterministic given the generator


def _mask_clip(box, h, w):
    """Render an integer box as a 255-valued mask in all channels, (2, h, w, 3) uint8."""
    m = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    m[:, y1:y2, x1:x2] = 255
    return m


def _mask_box(mask):
    ys, xs = torch.nonzero(mask[0, :, :, 0] > 127, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize(
    "transform,tol",
    [
        (T.CenterCrop((30, 36)), 0),
        (T.RandomCrop(28), 0),
        (T.RandomHorizontalFlip(1.0), 0),
        (T.ShortSideResize(80), 1),
        (T.Resize((30, 70)), 1),
        (T.RandomResizedCrop(40, scale=(0.5, 1.0)), 1.5),
        (T.MultiScaleCrop(32), 1.5),
    ],
    ids=lambda t: type(t).__name__ if isinstance(t, T.Transform) else str(t),
)
def test_box_transforms_agree_with_rendered_mask(transform, tol):
    box = (14, 12, 38, 34)
    clip = _mask_clip(box, 48, 60)
    for seed in range(4):
        out, tgt = transform(clip, {"boxes": torch.tensor([box], dtype=torch.float32)}, _gen(seed))
        if not (out[0, :, :, 0] > 127).any():
            assert len(tgt["boxes"]) == 0  # box cropped away entirely -> dropped
            continue
        assert torch.allclose(tgt["boxes"][0], _mask_box(out), atol=tol), (seed, tgt["boxes"], _mask_box(out))


def test_degenerate_boxes_are_dropped_with_their_labels():
    clip = torch.zeros(1, 40, 40, 3, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 30.0, 30.0], [35.0, 2.0, 39.0, 8.0]])
    labels = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    _, tgt = T.CenterCrop(20)(clip, {"boxes": boxes, "labels": labels})
    assert torch.equal(tgt["boxes"], torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    assert torch.equal(tgt["labels"], labels[1:2])


def test_normalize_matches_manual_formula_rgb_and_bgr():
    clip = _random_clip(t=3, h=5, w=7)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out, _ = T.Normalize(mean, std)(clip)
    assert out.shape == (3, 3, 5, 7) and out.dtype == torch.float32 and out.is_contiguous()
    for c in range(3):
        ref = (clip[..., c].double() / 255 - mean[c]) / std[c]
        assert torch.allclose(out[c].double(), ref, atol=1e-5)
    out, _ = T.Normalize((104, 117, 128), (1, 1, 1), "BGR", 255.0)(clip)
    for c, src in enumerate([2, 1, 0]):  # output channel c is input channel src
        assert torch.allclose(out[c].double(), clip[..., src].double() - (104, 117, 128)[c], atol=1e-4)
    views, _ = T.Normalize(mean, std)(torch.stack([clip, clip.flip(2)]))
    assert views.shape == (2, 3, 3, 5, 7) and torch.equal(views[0], T.Normalize(mean, std)(clip)[0])


def _equalize_reference(channel: np.ndarray) -> np.ndarray:
    """PIL ImageOps.equalize on one 2-D uint8 channel, written as a loop."""
    hist = np.bincount(channel.ravel(), minlength=256)
    nonzero = [c for c in hist if c]
    step = (sum(nonzero) - nonzero[-1]) // 255
    if step == 0:
        return channel.copy()
    lut, n = [], step // 2
    for i in range(256):
        lut.append(min(255, n // step))
        n += hist[i]
    return np.array(lut, dtype=np.uint8)[channel]


def test_randaugment_equalize_and_autocontrast_reference():
    clip = (_random_clip(t=2, h=16, w=20) // 3 + 40).float()  # narrow histogram
    eq = T._equalize(clip)
    for t in range(2):
        for c in range(3):
            ref = _equalize_reference(clip[t, :, :, c].to(torch.uint8).numpy())
            assert np.array_equal(eq[t, :, :, c].to(torch.uint8).numpy(), ref)
    ac = T._autocontrast(clip)
    assert torch.equal(ac.amin(dim=(1, 2)), torch.zeros(2, 3)) and torch.equal(
        ac.amax(dim=(1, 2)), torch.full((2, 3), 255.0)
    )


def test_affine_warp_geometry():
    x = _random_clip(t=2, h=16, w=16).float()
    rot = T._affine(x, [[0.0, -1.0], [1.0, 0.0]])  # 90 degrees about the centre
    assert any(torch.equal(rot, torch.rot90(x, k, dims=(1, 2))) for k in (1, -1))
    assert torch.equal(T._affine(x, [[1.0, 0.0], [0.0, 1.0]]), x)
    wide = _random_clip(t=1, h=12, w=20).float()
    shifted = T._affine(wide, [[1.0, 0.0], [0.0, 1.0]], (-3.0, 0.0))  # content moves 3 px right
    assert torch.equal(shifted[:, :, 3:], wide[:, :, :-3]) and (shifted[:, :, :3] == 0).all()


@pytest.mark.parametrize("op", T.RandAugment.OPS)
def test_randaugment_every_op_runs(op):
    clip = _random_clip(t=2, h=24, w=32)
    ra = T.RandAugment(1, 9, ops=[op])
    out, _ = ra(clip, None, _gen(1))
    assert out.shape == clip.shape and out.dtype == torch.uint8
    if op != "identity":
        assert not torch.equal(out, clip)
    with pytest.raises(ValueError, match="unknown RandAugment"):
        T.RandAugment(1, 9, ops=["warp"])


def test_randaugment_with_boxes_draws_only_photometric_ops():
    clip = _random_clip(t=2, h=24, w=32)
    ra = T.RandAugment(1, 9, ops=["translate_x", "rotate", "brightness"])
    candidates = [ra.apply(clip.float(), "brightness", s).round().to(torch.uint8) for s in (1.0, -1.0)]
    moved = 0
    for seed in range(10):
        out, _ = ra(clip, {"boxes": torch.tensor([[1.0, 1, 5, 5]])}, _gen(seed))
        assert any(torch.equal(out, c) for c in candidates)  # boxes stay valid: no geometric op
        moved += not any(torch.equal(ra(clip, None, _gen(seed))[0], c) for c in candidates)
    assert moved > 0  # without boxes the geometric ops are drawn


def test_hue_roundtrip_matches_colorsys():
    rgb = torch.rand(50, 3)
    hsv = T._rgb_to_hsv(rgb)
    ref = torch.tensor([colorsys.rgb_to_hsv(*p.tolist()) for p in rgb])
    assert torch.allclose(hsv, ref, atol=1e-5)
    assert torch.allclose(T._hsv_to_rgb(hsv), rgb, atol=1e-5)
    shifted = T.adjust_hue(rgb * 255, 0.25) / 255
    ref = torch.tensor([colorsys.hsv_to_rgb((h + 0.25) % 1, s, v) for h, s, v in ref.tolist()])
    assert torch.allclose(shifted, ref, atol=1e-4)


def test_random_erasing_erases_one_rectangle():
    clip = torch.full((3, 30, 40, 3), 7, dtype=torch.uint8)
    out, _ = T.RandomErasing(1.0, mode="const")(clip, None, _gen(3))
    zero = (out == 0).all(-1)  # (T, H, W)
    ys, xs = torch.nonzero(zero[0], as_tuple=True)
    assert len(ys) > 0 and torch.equal(zero, zero[:1].expand_as(zero))
    assert zero[0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # a filled rectangle
    assert (clip == 7).all()  # input untouched


def test_mixup_is_exact_and_labels_sum_to_one():
    x = torch.randn(4, 3, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    mix = T.MixupCutmix(alpha_mixup=0.8, alpha_cutmix=0.0, label_smoothing=0.1, num_classes=5, seed=0)
    out, soft = mix(x.clone(), labels)
    lam = mix.last_params["lam"]
    assert mix.last_params["op"] == "mixup"
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(soft.sum(1), torch.ones(4))
    off = 0.1 / 5
    assert torch.isclose(soft[0, 0], torch.tensor(lam * (0.9 + off) + (1 - lam) * off))
    assert torch.isclose(soft[0, 3], torch.tensor((1 - lam) * (0.9 + off) + lam * off))


def test_cutmix_box_and_lambda_are_exact():
    x = torch.randn(3, 3, 4, 16, 20)
    cut = T.MixupCutmix(alpha_mixup=0.0, alpha_cutmix=1.0, label_smoothing=0.0, num_classes=3, seed=1)
    out, soft = cut(x.clone(), torch.tensor([0, 1, 2]))
    y0, y1, x0, x1 = cut.last_params["box"]
    mask = torch.zeros(16, 20, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    assert torch.equal(out, torch.where(mask, x.flip(0), x))  # same box in every frame
    lam = 1 - mask.float().mean().item()
    assert cut.last_params["lam"] == pytest.approx(lam)
    assert torch.allclose(soft[0], torch.tensor([lam, 0.0, 1 - lam]))
    never = T.MixupCutmix(prob=0.0, num_classes=3, label_smoothing=0.0)
    same, hard = never(x.clone(), torch.tensor([0, 1, 2]))
    assert torch.equal(same, x) and torch.equal(hard, torch.eye(3))


def test_factories_shapes_and_options():
    clip = _random_clip(t=4, h=48, w=64)
    tr = T.train_transform(32, (0.5,) * 3, (0.25,) * 3, scale_jitter="rrc", flip_label_map={1: 2})
    out, tgt = tr(clip, {"label": 1}, _gen(0))
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32 and tgt["label"] in (1, 2)
    labels = {tr(clip, {"label": 1}, _gen(s))[1]["label"] for s in range(20)}
    assert labels == {1, 2}
    for crops in (1, 3, 10):
        te = T.test_transform(32, (0.5,) * 3, (0.25,) * 3, crops=crops)
        out, _ = te(clip)
        assert out.shape == ((3, 4, 32, 32) if crops == 1 else (crops, 3, 4, 32, 32))
    assert isinstance(T.test_transform(224, (0,) * 3, (1,) * 3).transforms[0], T.ShortSideResize)
    assert T.test_transform(224, (0,) * 3, (1,) * 3).transforms[0].size == 256
    with pytest.raises(ValueError, match="crops"):
        T.test_transform(32, (0,) * 3, (1,) * 3, crops=5)
    with pytest.raises(ValueError, match="scale_jitter"):
        T.train_transform(32, (0,) * 3, (1,) * 3, scale_jitter="bogus")
