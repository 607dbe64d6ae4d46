"""EVAD model: outputs, identity of keep 1.0 with a plain ViT, map restoration, training step, converter."""

import math

import pytest
import torch
import torch.nn.functional as F

from kinetix.detection.evad import DetectionOutput, checkpoint_filter_fn
from kinetix.detection.sparse_rcnn import FPN, SparseRCNN, multiscale_roi_align
from kinetix.layers.roi_align import roi_align
from kinetix.layers.token_pruning import KTPBlock
from kinetix.models import create_model, load_checkpoint, save_model_weights


def _clip(h=64, w=96, b=2):
    return torch.randn(b, 3, 8, h, w)


def test_eval_outputs_and_padding():
    m = create_model("test_evad").eval()
    with torch.no_grad():
        out = m(_clip(64, 80))  # 80 is padded to 96 inside
    assert len(out) == 2 and all(isinstance(o, DetectionOutput) for o in out)
    for o in out:
        n = len(o.boxes)
        assert 1 <= n <= 10 and o.boxes.shape == (n, 4) and o.action_scores.shape == (n, 4)
        assert (o.boxes[:, 0] >= 0).all() and (o.boxes[:, 2] <= 80).all() and (o.boxes[:, 3] <= 64).all()
        assert ((o.action_scores >= 0) & (o.action_scores <= 1)).all()
        assert torch.equal(o.labels, o.action_scores.argmax(-1))


def test_keep_rate_one_equals_plain_vit_and_unpruned_model():
    torch.manual_seed(0)
    m10 = create_model("test_evad", keep_rate=1.0).double().eval()
    m07 = create_model("test_evad", keep_rate=0.7).double().eval()
    m07.load_state_dict(m10.state_dict())
    x = _clip().double()
    # a plain ViT: time-major tokens, no reordering, every block on every token
    tok, grid = m10.patch_embed(x)
    tok = tok + m10.pos_embed(grid, tok)
    for blk in m10.blocks:
        tok, _ = blk(tok)
    plain = m10.norm(tok)
    t, h, w = grid
    S, key = h * w, t // 2
    feats, _idx, _, _, k = m10.forward_features(x)
    assert k == key and feats.shape == plain.shape
    order = torch.cat(
        [torch.arange(key * S, (key + 1) * S), torch.arange(key * S), torch.arange((key + 1) * S, t * S)]
    )
    torch.testing.assert_close(feats, plain[:, order], rtol=0, atol=1e-12)
    # the pruning model with its rates set to 1.0 runs explicit attention but gives the same detector output
    for blk in m07.blocks:
        if isinstance(blk, KTPBlock):
            blk.keep_rate = 1.0
    with torch.no_grad():
        a, b = m10(x), m07(x)
    for oa, ob in zip(a, b):
        torch.testing.assert_close(oa.boxes, ob.boxes, rtol=0, atol=1e-9)
        torch.testing.assert_close(oa.action_scores, ob.action_scores, rtol=0, atol=1e-12)


def test_pruning_token_counts_in_the_model():
    m = create_model("test_evad", keep_rate=0.7).eval()
    x = _clip()
    feats, idx, maps, grid, _key = m.forward_features(x)
    t, h, w = grid
    S = h * w
    n = t * S
    for _ in range(2):  # pruning at blocks 1 and 2
        n = math.ceil(0.7 * n)
    assert feats.shape[1] == n and idx.shape == (2, n - S)
    assert (idx >= 0).all() and (idx < (t - 1) * S).all()
    assert all(torch.equal(r.sort().values, r) for r in idx)  # sorted positions
    assert [mp.shape for mp in maps] == [(2, 48, h, w)] * 4


@pytest.mark.parametrize("official", [False, True])
def test_restore_vs_loop(official):
    m = create_model("test_evad", official_order=official)
    head = m.det_head
    B, D, grid, key = 2, 32, (4, 2, 3), 2
    S = 6
    idx = torch.stack([torch.tensor([7, 0, 12, 3]), torch.tensor([1, 17, 5, 9])])  # score order
    z = torch.randn(B, S + 4, D)
    full, full_idx = head.restore(z, idx, grid, key)
    for b in range(B):
        want = head.mask_token[0, 0].expand(24, D).clone()
        want[key * S : (key + 1) * S] = z[b, :S]
        # non-keyframe position p sits at full index p (< key·S) or p + S; the released code fills
        # positions in ascending order whatever the token order
        positions = sorted(idx[b].tolist()) if official else idx[b].tolist()
        for j, p in enumerate(positions):
            want[p if p < key * S else p + S] = z[b, S + j]
        torch.testing.assert_close(full[b], want)
        assert torch.equal(full[b, full_idx[b]], z[b])


def test_training_step_reaches_every_part():
    m = create_model("test_evad", keep_rate=0.7).train()
    tg = [
        {"boxes": torch.tensor([[10.0, 8, 40, 60]]), "actions": torch.tensor([[1.0, 0, 0, 1]])},
        {
            "boxes": torch.tensor([[50.0, 4, 90, 50], [5, 5, 30, 30]]),
            "actions": torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0]]),
        },
    ]
    out = m(_clip(), tg)
    assert set(out) == {"loss", "loss_ce", "loss_l1", "loss_giou", "loss_action"}
    out["loss"].backward()
    for name in ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "fpn.fpn_lateral2.weight",
                 "sparse_rcnn.init_proposal_features.weight", "sparse_rcnn.head_series.1.bboxes_delta.weight",
                 "det_head.mask_token", "det_head.decoder.blocks.1.action_logits.weight"]:  # fmt: skip
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_stages_see_detached_boxes():
    torch.manual_seed(0)
    head = SparseRCNN(dim=16, num_proposals=3, num_stages=2, num_heads=2, ffn_dim=32)
    feats = [torch.randn(1, 16, 32 // s, 32 // s) for s in (1, 2, 4, 8)]
    _, boxes, _ = head(feats, (128, 128))
    boxes[1].sum().backward()  # the last stage's boxes only
    g0 = head.head_series[0].bboxes_delta.weight.grad
    assert g0 is None or g0.abs().sum() == 0  # no path through the previous stage's boxes
    assert head.head_series[0].linear1.weight.grad.abs().sum() > 0  # proposal features do flow
    assert head.head_series[1].bboxes_delta.weight.grad.abs().sum() > 0


def test_fpn_lateral_before_upsampling_is_exact():
    fpn = FPN(8, 16).double()
    maps = [torch.randn(1, 8, 4, 6, dtype=torch.float64) for _ in range(4)]
    # Detectron2 order: resize the backbone map first, then the lateral 1x1 conv
    lat = [getattr(fpn, f"fpn_lateral{i + 2}")(F.interpolate(mp, scale_factor=s, mode="nearest"))
           for i, (mp, s) in enumerate(zip(maps, (4.0, 2.0, 1.0, 0.5)))]  # fmt: skip
    prev, want = lat[3], [fpn.fpn_output5(lat[3])]
    for i in (2, 1, 0):
        prev = lat[i] + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        want.insert(0, getattr(fpn, f"fpn_output{i + 2}")(prev))
    got = fpn(maps)
    for g, w in zip(got[:4], want):
        torch.testing.assert_close(g, w)
    assert got[4].shape[-2:] == (1, 2)  # p6 = stride-2 subsampling of p5


def test_multiscale_pooler_picks_the_detectron2_level():
    feats = [torch.randn(1, 4, 256 // s, 256 // s, dtype=torch.float64) for s in (4, 8, 16, 32)]
    sizes = [20.0, 120.0, 224.0, 300.0, 460.0, 1000.0]  # floor(4 + log2(s/224)) clamped to 2..5
    boxes = torch.tensor([[[5.0, 5.0, 5 + s, 5 + s] for s in sizes]], dtype=torch.float64)
    got = multiscale_roi_align(feats, boxes)
    for k, lvl in enumerate([2, 3, 4, 4, 5, 5]):
        want = roi_align(feats[lvl - 2], boxes[:, k : k + 1], 7, 1 / 2**lvl, 2)
        torch.testing.assert_close(got[:, k : k + 1], want)


def _to_official(sd):
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("fpn.").replace("sparse_rcnn.head_series.", "det_head.s0_headseries.")
        out["backbone." + k.removeprefix("sparse_rcnn.")] = v
    return out


def test_converter_from_official_and_videomae_layouts(tmp_path):
    src = create_model("test_evad")
    official = _to_official(src.state_dict())
    assert (
        "backbone.fpn_lateral2.weight" in official
        and "backbone.det_head.s0_headseries.0.norm1.weight" in official
    )
    dst = create_model("test_evad")
    torch.save({"model_state": official}, tmp_path / "evad.pyth")
    load_checkpoint(dst, str(tmp_path / "evad.pyth"))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # a VideoMAE pre-training checkpoint: encoder + decoder; the FPN and heads keep their init
    vm = {
        f"encoder.{k}": v
        for k, v in src.state_dict().items()
        if k.startswith(("patch_embed", "blocks", "norm"))
    }
    vm["decoder.blocks.0.attn.qkv.weight"] = src.det_head.decoder.blocks[0].attn.qkv.weight
    vm["encoder_to_decoder.weight"] = src.det_head.encoder_to_decoder.weight
    vm["decoder.head.weight"] = torch.zeros(3, 3)  # pixel head: not part of EVAD
    fresh = create_model("test_evad")
    conv = checkpoint_filter_fn(vm, fresh)
    assert torch.equal(conv["blocks.3.mlp.fc2.weight"], src.state_dict()["blocks.3.mlp.fc2.weight"])
    assert torch.equal(conv["det_head.encoder_to_decoder.weight"], src.det_head.encoder_to_decoder.weight)
    assert torch.equal(conv["fpn.fpn_output2.weight"], fresh.state_dict()["fpn.fpn_output2.weight"])
    # Hugging Face VideoMAE encoder keys (separate q/k/v) go through the VideoMAE converter
    hf = {"videomae.embeddings.patch_embeddings.projection.weight": src.patch_embed.proj.weight}
    w = src.blocks[1].attn.qkv.weight
    for j, name in enumerate(("query", "key", "value")):
        hf[f"videomae.encoder.layer.1.attention.attention.{name}.weight"] = w[j * 48 : (j + 1) * 48]
    conv = checkpoint_filter_fn(hf, fresh)
    assert torch.equal(conv["blocks.1.attn.qkv.weight"], w)
    assert torch.equal(conv["patch_embed.proj.weight"], src.patch_embed.proj.weight)
    # and native kinetix weights round-trip through safetensors
    save_model_weights(src, tmp_path / "w.safetensors")
    again = create_model("test_evad", checkpoint=str(tmp_path / "w.safetensors"))
    assert torch.equal(again.state_dict()["blocks.0.attn.q_bias"], src.state_dict()["blocks.0.attn.q_bias"])


def test_registry_and_model_api():
    with torch.device("meta"):  # structure only: no 185 M-parameter initialisation
        m = create_model("evad_vit_base")
    assert m.pretrained_cfg.num_frames == 16 and m.pretrained_cfg.frame_interval == 4
    assert [type(b).__name__ for b in m.blocks].count("KTPBlock") == 3
    assert [i for i, b in enumerate(m.blocks) if isinstance(b, KTPBlock)] == [3, 6, 9]
    assert len(m.sparse_rcnn.head_series) == 6 and m.sparse_rcnn.init_proposal_boxes.weight.shape == (100, 4)
    m.reset_classifier(60)
    assert m.get_classifier().out_features == 60
    assert "det_head.mask_token" in m.no_weight_decay()


@pytest.mark.parametrize("patch", [8, 16])
def test_fpn_strides_follow_the_patch_size(patch):
    m = create_model("test_evad", patch_size=patch).eval()
    x = _clip(64, 96)
    _, _, maps, grid, _ = m.forward_features(x)
    assert grid[1:] == (64 // patch, 96 // patch)
    assert [p.shape[-2:] for p in m.fpn(maps)[:4]] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]
    with torch.no_grad():
        assert len(m(x)) == 2


@pytest.mark.parametrize("num_frames", [4, 8, 16])
def test_keyframe_slice_holds_the_annotated_frame(num_frames):
    """The AVA clip sampler puts the annotated frame at clip position T // 2; the detector must read
    its boxes off the tubelet slice built from that frame (the first S tokens after reordering)."""
    import numpy as np

    from kinetix.data.sampling import keyframe_indices
    from kinetix.layers.token_pruning import keyframe_first

    pos = int(np.flatnonzero(keyframe_indices(50, num_frames, 3, 200) == 50)[0])
    m = create_model("test_evad", num_frames=num_frames).eval()
    x = torch.zeros(1, 3, num_frames, 32, 32)
    marked = x.clone()
    marked[:, :, pos] = 1.0  # only the annotated frame changes
    with torch.no_grad():
        (a, grid), (b, _) = m.patch_embed(x), m.patch_embed(marked)
        a, _ = keyframe_first(a, grid[0])
        b, _ = keyframe_first(b, grid[0])
    S = grid[1] * grid[2]
    changed = (a - b).abs().amax(-1)[0] > 0  # (t·S,) tokens that saw the annotated frame
    assert changed[:S].all() and not changed[S:].any()


# ---- actor features: RoI extension + per-slice RoIAlign, spatial max, temporal mean ----------------
# MCG-NJU/EVAD ``projects/evad/models/head_helper.py`` (EVADRoIHead): ``bbox_extension`` takes the
# final-stage boxes *unclipped* (``bboxes = pred_bboxes.detach()``), ``boxw = xmax − xmin + 1``
# (``TO_REMOVE = 1``), pads ``x_scale·boxw/2`` and ``y_scale·boxh/2`` on each side (ROI_EXTENSION
# (0.4, 0.2)) and clips with SlowFast's ``clip_boxes_tensor`` to [0, w − 1] × [0, h − 1] of the unpadded
# image; then for every temporal slice ``ROIPooler`` (ROIAlignV2 = aligned, 7×7, sampling ratio 2,
# scale 1/16) with the same boxes, stacked to (B·P, C, t, 7, 7), ``AdaptiveMaxPool3d((t, 1, 1))``
# (spatial max) and ``AvgPool3d((t, 1, 1))`` (temporal mean).
def _official_extension(box, ratio, H, W):
    x1, y1, x2, y2 = box
    pw, ph = ratio[0] * (x2 - x1 + 1) / 2, ratio[1] * (y2 - y1 + 1) / 2
    lims = (W - 1, H - 1, W - 1, H - 1)
    return [min(max(v, 0.0), lim) for v, lim in zip((x1 - pw, y1 - ph, x2 + pw, y2 + ph), lims)]


def _bilinear(fm, y, x):
    """ROIAlign's bilinear sample of one ``(C, h, w)`` map (0 outside [-1, h] × [-1, w], else clamped)."""
    C, h, w = fm.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(C, dtype=fm.dtype)
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fm[:, y0, x0] + (1 - ly) * lx * fm[:, y0, x1]
            + ly * (1 - lx) * fm[:, y1, x0] + ly * lx * fm[:, y1, x1])  # fmt: skip


def _roi_align_v2(fm, box, scale, out=7, ratio=2):
    """One aligned RoIAlign: ``(C, out, out)``, each bin the mean of ratio × ratio samples."""
    x1, y1, x2, y2 = (v * scale - 0.5 for v in box)
    bw, bh = (x2 - x1) / out, (y2 - y1) / out
    res = torch.zeros(fm.shape[0], out, out, dtype=fm.dtype)
    for i in range(out):
        for j in range(out):
            for a in range(ratio):
                for b in range(ratio):
                    res[:, i, j] += _bilinear(
                        fm, y1 + (i + (a + 0.5) / ratio) * bh, x1 + (j + (b + 0.5) / ratio) * bw
                    )
    return res / ratio**2


def test_actor_features_match_the_official_extension_and_pooling():
    torch.manual_seed(0)
    head = create_model("test_evad").det_head.double()
    B, D, (t, h, w), (H, W) = 2, 32, (4, 3, 5), (48, 80)  # 16-px patches on a 48 × 80 keyframe
    full = torch.randn(B, t * h * w, D, dtype=torch.float64)  # time-major (t, h, w) map
    boxes = torch.tensor([[[10.0, 5, 40, 30], [-12, -6, 30, 52], [60, 20, 95, 47]],  # 2nd/3rd stick out
                          [[0.0, 0, 79, 47], [33, 11, 34.5, 20], [70, 40, 90, 60]]], dtype=torch.float64)  # fmt: skip
    got = head.actor_features(full, boxes, (t, h, w), (H, W))
    maps = full.view(B, t, h, w, D).permute(0, 1, 4, 2, 3)  # (B, t, D, h, w)
    for b in range(B):
        for p in range(boxes.shape[1]):
            roi = _official_extension(boxes[b, p].tolist(), (0.4, 0.2), H, W)
            per_slice = [_roi_align_v2(maps[b, s], roi, 1 / 16).amax((1, 2)) for s in range(t)]  # spatial max
            torch.testing.assert_close(got[b, p], torch.stack(per_slice).mean(0))  # temporal mean


def test_context_head_gets_the_unclipped_final_boxes():
    m = create_model("test_evad").eval()
    with torch.no_grad():  # proposals larger than the image: the final boxes stick out of it
        m.sparse_rcnn.init_proposal_boxes.weight[:, 2:] = 1.6
    seen = {}

    def final_boxes(mod, args, out):
        seen["final"] = out[1][-1]

    def head_boxes(mod, args):
        seen["head"] = args[4]

    m.sparse_rcnn.register_forward_hook(final_boxes)
    m.det_head.register_forward_pre_hook(head_boxes)
    with torch.no_grad():
        out = m(_clip(64, 80))
    assert torch.equal(seen["head"], seen["final"])
    assert (seen["final"][..., 2] > 80).any() or (seen["final"][..., 0] < 0).any()
    assert all((o.boxes[:, 0] >= 0).all() and (o.boxes[:, 2] <= 80).all() for o in out)  # outputs clipped
