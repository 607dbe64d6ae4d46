"""kinetix.explain against formulas computed by hand: Grad-CAM == CAM for a pooled linear head,
attention rollout == a brute-force product of per-stage matrices (residual included), CLS maps ==
softmax(q k^T) by hand; every family on real mp4s; the mask-mass share on synthetic shapes."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kinetix.data.io import VideoReader
from kinetix.data.synthetic import load_temporal_mask
from kinetix.engine.datamodule import resolve_data_settings
from kinetix.errors import ConfigError
from kinetix.explain import (
    attention_maps,
    attention_rollout,
    explain_video,
    gradcam,
    mask_for_view,
    mask_mass_share,
    methods_for,
    write_explanation,
)
from kinetix.explain.attention import record
from kinetix.models import create_model


def _clip(model, seed=1):
    cfg = model.pretrained_cfg
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)


# ---------------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("name", ["test_tsn", "test_tsm"])
def test_gradcam_equals_cam_for_a_pooled_linear_head(name):
    """TSN/TSM average per-frame logits of globally pooled features, so dy/dA[t,k,i,j] = W[c,k]/(T h w)
    and Grad-CAM reduces to ReLU(sum_k W[c,k] A[t,k]) / (T h w) (Selvaraju et al. 2017, Sec. 3.1)."""
    model = create_model(name).eval()
    with torch.no_grad():
        model.fc.weight.normal_()
    x = _clip(model)
    acts = []
    h = model.backbone.layer4.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    cam, logits, layers = gradcam(model, x, target=3, layers=("backbone.layer4",))
    h.remove()
    A = acts[0]  # (T, K, h, w)
    T, _, hh, ww = A.shape
    by_hand = torch.relu(torch.einsum("k,tkij->tij", model.fc.weight[3].detach(), A)) / (T * hh * ww)
    assert layers == ("backbone.layer4",) and cam.shape == (1, T, hh, ww)
    torch.testing.assert_close(cam[0], by_hand, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(logits, model(x).detach())


def test_gradcam_picks_a_stage_with_a_spatial_map():
    model = create_model("test_tsn").eval()
    x = torch.randn(1, 3, 8, 32, 32)  # the last stage is 1x1 at 32 px
    cam, _, layers = gradcam(model, x)
    assert layers == ("backbone.layer2",) and cam.shape[-2:] == (4, 4)  # stride 8
    cam, _, layers = gradcam(model, x, min_size=1)
    assert layers == ("backbone.layer4",)
    with pytest.raises(ConfigError, match="no module named"):
        gradcam(model, x, layers=("backbone.layer9",))


# ---------------------------------------------------------------------------------- attention
def _probs_by_hand(attn, tokens):
    """Head-mean softmax(q k^T / sqrt(d)) of ``tokens (B, L, C)`` (already normalised)."""
    C = tokens.shape[-1]
    H = attn.num_heads
    hd = C // H
    qkv = attn.qkv_packed(tokens)  # (B, L, 3, H, hd): the projection only
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    per_head = [(q[:, :, i] @ k[:, :, i].transpose(-1, -2) / math.sqrt(hd)).softmax(-1) for i in range(H)]
    return torch.stack(per_head, 1).mean(1)  # (B, L, L)


def _norm_outputs(model):
    """Outputs of every ``*norm1`` module in call order (the tokens each attention stage reads)."""
    out = []
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: out.append((n, o.detach())))
        for n, m in model.named_modules()
        if n.endswith("norm1")
    ]
    return out, hooks


def _rollout_by_hand(stages, cls: bool):
    n = stages[0].shape[-1]
    eye = torch.eye(n)
    R = (
        torch.linalg.multi_dot([0.5 * M + 0.5 * eye for M in reversed(stages)])
        if len(stages) > 1
        else (0.5 * stages[0] + 0.5 * eye)
    )
    return R[0] if cls else R.mean(0)


@pytest.mark.parametrize(
    "name, kwargs, cls, layout",
    [
        ("test_videomae", {}, False, "thw"),
        ("test_vivit", {"model": 1}, True, "thw"),
        ("test_timesformer", {"attention": "joint"}, True, "hwt"),
    ],
)
def test_rollout_equals_brute_force_product_joint(randomize, name, kwargs, cls, layout):
    model = randomize(create_model(name, **kwargs))
    x = _clip(model)
    normed, hooks = _norm_outputs(model)
    _, log, grid = record(model, x)
    for h in hooks:
        h.remove()
    stages = [_probs_by_hand(model.blocks[int(n.split(".")[1])].attn, o)[0] for n, o in normed]
    P = 1 if cls else 0
    want = _rollout_by_hand(stages, cls)[P:]
    t, h, w = grid
    want = want.view(t, h, w) if layout == "thw" else want.view(h, w, t).permute(2, 0, 1)
    got = attention_rollout(model, log, grid)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    if cls:  # the last block's CLS row is the CLS-to-patch map
        last = stages[-1][0, 1:]
        last = last.view(t, h, w) if layout == "thw" else last.view(h, w, t).permute(2, 0, 1)
        ((label, m),) = attention_maps(model, log, grid).items()
        assert "CLS" in label
        torch.testing.assert_close(m[0], last, atol=1e-6, rtol=1e-4)


def test_rollout_equals_brute_force_product_divided_timesformer(randomize):
    """TimeSformer divided attention, per block: time (per location, no CLS) then space (per frame,
    CLS repeated per frame and averaged back), each stage with its residual, matrices filled by loops."""
    model = randomize(create_model("test_timesformer"))
    x = _clip(model)
    normed, hooks = _norm_outputs(model)
    _, log, grid = record(model, x)
    for h in hooks:
        h.remove()
    T, H, W = grid
    n = 1 + T * H * W

    def tok(h, w, t):  # official space-major order
        return 1 + (h * W + w) * T + t

    stages, spatial_cls = [], []
    calls = iter(normed)
    for blk in model.blocks:
        _, xt = next(calls)  # temporal_norm1 on the patches (B, H, W, T, C)
        M = torch.eye(n)
        for h in range(H):
            for w in range(W):
                p = _probs_by_hand(blk.temporal_attn, xt[:, h, w])[0]  # (T, T)
                idx = [tok(h, w, t) for t in range(T)]
                M[np.ix_(idx, idx)] = p
        stages.append(M)
        _, c = next(calls)  # norm1 on the CLS (B, 1, C)
        _, xs = next(calls)  # norm1 on the patches
        M = torch.zeros(n, n)
        rows = []
        for t in range(T):
            frame = torch.cat([c, xs[:, :, :, t].reshape(1, H * W, -1)], 1)
            p = _probs_by_hand(blk.attn, frame)[0]  # (1 + HW, 1 + HW)
            idx = [tok(h, w, t) for h in range(H) for w in range(W)]
            M[np.ix_(idx, idx)] = p[1:, 1:]
            M[idx, 0] = p[1:, 0]
            M[0, 0] += p[0, 0] / T
            M[0, idx] += p[0, 1:] / T
            rows.append(p[0, 1:].view(H, W))
        stages.append(M)
        spatial_cls.append(torch.stack(rows) / T)  # (T, H, W)
    want = _rollout_by_hand(stages, cls=True)[1:].view(H, W, T).permute(2, 0, 1)
    torch.testing.assert_close(attention_rollout(model, log, grid)[0], want, atol=1e-6, rtol=1e-4)
    maps = attention_maps(model, log, grid)
    torch.testing.assert_close(maps["space (CLS)"][0], spatial_cls[-1], atol=1e-6, rtol=1e-4)
    time_received = stages[-2][1:, 1:].mean(0).view(H, W, T).permute(2, 0, 1)
    torch.testing.assert_close(maps["time (mean attention)"][0], time_received, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------- real videos
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("test_tsm", {}),
        ("test_sifa", {}),
        ("test_sifa_swin", {"sifa_offsets": "learned"}),
        ("test_gsm_inceptionv3", {}),
        ("test_swin", {}),
        ("test_timesformer", {}),
        ("test_vivit", {"model": 2}),
        ("test_videomae", {}),
        ("test_evad", {}),
    ],
)
def test_explain_every_family_on_a_real_mp4(randomize, synth, tmp_path, name, kwargs):
    model = randomize(create_model(name, **kwargs))
    settings = resolve_data_settings(model.pretrained_cfg, None)
    video = synth / "videos" / "v00000.mp4"
    for method in methods_for(model):
        expl = explain_video(model, video, settings, method)
        T = expl.frames.shape[0]
        assert expl.frames.dtype == np.uint8 and expl.maps
        for m in expl.maps.values():
            assert m.shape == expl.frames.shape[:3] and m.min() >= 0 and m.max() <= 1
        files = write_explanation(expl, tmp_path)
        assert files["png"].read_bytes()[:4] == b"\x89PNG"
        with VideoReader(files["mp4"]) as r:
            assert r.num_frames == T and r.width >= 128 * (1 + len(expl.maps))
    if name in ("test_tsm", "test_timesformer"):
        with pytest.raises(ConfigError, match="does not apply"):
            explain_video(model, video, settings, "offsets")
    if name == "test_sifa_swin":  # learned offsets are shown; the released zero offsets have none
        assert expl.maps["offsets"].max() > 0
        released = create_model(name)
        assert methods_for(released) == ("gradcam",)
        with pytest.raises(ConfigError, match=r"fixed zero SIFA offsets.*use --method gradcam"):
            explain_video(released, video, settings, "offsets")


def test_model_input_is_shown_and_masks_line_up(synth):
    """The de-normalised view is the frames the model saw (the decoded pixels at 32 px), and the
    synthetic mask of the view covers the shape: its pixels differ from the background."""
    model = create_model("test_tsm")
    settings = replace(resolve_data_settings(model.pretrained_cfg, None), input_size=32, test_resize=32)
    video = synth / "videos" / "v00001.mp4"
    expl = explain_video(model.eval(), video, settings, "gradcam")
    with VideoReader(video) as r:
        decoded = r.get_frames(expl.frame_indices).numpy()
    assert np.abs(expl.frames.astype(int) - decoded).max() <= 1  # up to float rounding
    mask = mask_for_view(load_temporal_mask(synth, video), expl.frame_indices, settings)
    assert mask.shape == expl.frames.shape[:3] and mask.any()
    f = expl.frames.astype(np.float32)
    bg = np.median(f[~mask], 0)
    assert np.linalg.norm(f[mask] - bg, axis=-1).mean() > 3 * np.linalg.norm(f[~mask] - bg, axis=-1).mean()
    share = mask_mass_share(expl.maps["Grad-CAM"], mask)
    assert 0 <= share <= 1


def test_mask_mass_share():
    mask = np.zeros((2, 4, 4), bool)
    mask[:, :2, :2] = True
    assert mask_mass_share(mask.astype(float), mask) == 1.0
    assert mask_mass_share(np.ones((2, 4, 4)), mask) == pytest.approx(0.25)  # uniform: the area share
    heat = np.zeros((2, 4, 4))
    heat[0, 0, 0], heat[1, 3, 3] = 3.0, 1.0
    assert mask_mass_share(heat, mask) == pytest.approx(0.75)
    assert math.isnan(mask_mass_share(np.zeros((2, 4, 4)), mask))


# ---------------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kinetix", "explain", *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_cli_explain(synth, tmp_path, capsys):
    from kinetix.cli.main import main

    model = create_model("test_tsm")
    weights = tmp_path / "tsm.safetensors"
    save_file(model.state_dict(), str(weights))
    video = synth / "videos" / "v00002.mp4"
    base = [str(video), "--model", "test_tsm", "--checkpoint", str(weights), "--out", str(tmp_path / "o")]
    r = _cli(*base)  # a real process, as a user runs it
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "v00002_gradcam.png").is_file() and (
        tmp_path / "o" / "v00002_gradcam.mp4"
    ).is_file()
    assert main(["explain", *base, "--method", "rollout"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert main(["explain", *base, "--class", "no such class"]) == 2
    assert "not a class" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["explain", "--help"])
    assert e.value.code == 0 and "examples:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("test_timesformer", {}),
        ("test_timesformer", {"attention": "axial"}),
        ("test_vivit", {"model": 3}),
        ("test_vivit", {"model": 3, "order": ("time", "space")}),
        ("test_vivit", {"model": 4}),
    ],
)
def test_stage_matrices_follow_the_token_layout(randomize, name, kwargs):
    """Every stage matrix is row-stochastic and only mixes patch tokens that share the grid
    coordinates the stage does not attend over (coordinates from spacetime.token_coords)."""
    from kinetix.explain.attention import _block_stages, _encoders
    from kinetix.layers.spacetime import token_coords

    model = randomize(create_model(name, **kwargs))
    _, log, grid = record(model, _clip(model))
    enc = _encoders(model, grid)[0]
    P = enc.num_prefix
    coords = token_coords(grid, enc.layout)  # (N, 3) t, h, w
    free = {"time": "t", "space": "hw", "width": "w", "height": "h", "time+space": "thw"}
    seen = []
    for bname, blk in enc.blocks:
        for stage, M, _ in _block_stages(log, bname, blk, enc):
            seen.append(stage)
            torch.testing.assert_close(M.sum(-1), torch.ones(M.shape[:2]))
            fixed = [i for i, a in enumerate("thw") if a not in free[stage]]
            same = (coords[:, None, fixed] == coords[None, :, fixed]).all(-1)  # (N, N)
            if stage == "time+space":  # Model 4: time heads OR space heads
                same = (coords[:, None, 1:] == coords[None, :, 1:]).all(-1) | (
                    coords[:, None, 0] == coords[None, :, 0]
                )
            assert (M[0, P:, P:][~same] == 0).all() and (M[0, P:, P:][same] > 0).all(), stage
    order = kwargs.get("order", ("space", "time")) if name == "test_vivit" and kwargs["model"] == 3 else None
    if order:
        assert seen[:2] == list(order)
