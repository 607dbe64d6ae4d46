"""EVAD: efficient video action detection with keyframe-centric token dropout and context refinement
(Chen, Tong, Song, Wu, Wang, ICCV 2023).

One ViT (VideoMAE-style: 2×16×16 tubelets, fixed sinusoid positions, q/v biases) runs on the clip with
keyframe-centric token pruning (``token_pruning.py``). Keyframe maps from four depths feed an FPN and a
Sparse R-CNN head that localises actors on the keyframe (``sparse_rcnn.py``). The kept tokens are
projected, the ``(t, h, w)`` map is restored with a learnable mask token at dropped positions, every
(extended) actor box is RoIAligned on every time slice (spatial max, temporal mean), and the context
refinement decoder attends over [kept tokens + actor features], with an action head after every layer.

Input ``x (B, 3, T, H, W)`` (padded to a multiple of 32 inside). Training: ``forward(x, targets)``
with per-clip ``{"boxes": (M, 4) xyxy pixels, "actions": (M, A) multi-hot}`` → dict of losses.
Eval: ``forward(x)`` → one :class:`DetectionOutput` per clip (boxes xyxy pixels on the keyframe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.layers.patch_embed import TubeletEmbed
from kinetix.layers.pos_embed import sinusoid_table_3d
from kinetix.layers.roi_align import roi_align
from kinetix.layers.token_pruning import Block, keyframe_first, make_blocks
from kinetix.models._pretrained import KINETICS_MEAN, KINETICS_STD, PretrainedCfg
from kinetix.models._registry import register_model
from kinetix.models.videomae import _from_hf as _videomae_from_hf

from .boxes import clip_boxes, extend_boxes
from .losses import DetectionCriterion
from .sparse_rcnn import FPN, SparseRCNN


@dataclass
class DetectionOutput:
    """Detections of one clip's keyframe: ``boxes (n, 4)`` x1, y1, x2, y2 in input pixels, actor
    ``scores (n,)``, top action ``labels (n,)`` (0-based class index) and ``action_scores (n, A)``
    (per-action probabilities, the AVA scores)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    action_scores: torch.Tensor


class CRDBlock(Block):
    """Context-refinement decoder layer: a ViT block plus its own action head on the last P tokens."""

    def __init__(self, dim: int, num_heads: int, num_classes: int, act_dim: int = 2048, **kw):
        super().__init__(dim, num_heads, **kw)
        self.act_module = nn.ModuleList(
            [nn.Linear(dim, act_dim, bias=False), nn.LayerNorm(act_dim), nn.ReLU()]
        )
        self.action_logits = nn.Linear(act_dim, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.act_module:
            x = layer(x)
        return self.action_logits(x)


class ContextHead(nn.Module):
    """Classification branch: restore the map, RoIAlign per slice, context refinement decoder."""

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        dim: int = 384,
        depth: int = 6,
        num_heads: int = 6,
        act_dim: int = 2048,
        drop_path_rate: float = 0.1,
        roi_extension: tuple[float, float] = (0.4, 0.2),
        pretrain_grid: int = 14,
        official_order: bool = False,
        patch_size: int = 16,
    ):
        super().__init__()
        self.dim, self.roi_extension, self.pretrain_grid = dim, tuple(roi_extension), pretrain_grid
        self.patch_size = patch_size
        self.official_order = official_order
        self.encoder_to_decoder = nn.Linear(embed_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        dpr = [
            drop_path_rate * i / max(depth - 1, 1) for i in range(depth)
        ]  # (python: works on the meta device)
        self.decoder = nn.Module()
        self.decoder.blocks = nn.ModuleList(
            CRDBlock(dim, num_heads, num_classes, act_dim, drop_path=d) for d in dpr
        )
        self._pos = {}
        for p in self.parameters():  # as EVADRoIHead._reset_parameters (mask_token included)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def pos_embed(self, grid, ref: torch.Tensor) -> torch.Tensor:
        key = (tuple(grid), ref.device, ref.dtype)
        if key not in self._pos:
            base = (grid[0], self.pretrain_grid, self.pretrain_grid)
            self._pos[key] = sinusoid_table_3d(tuple(grid), base, self.dim).to(ref)
        return self._pos[key]

    def restore(self, z: torch.Tensor, idx: torch.Tensor, grid, key: int):
        """Kept tokens ``z (B, S + n, D)`` → full time-major map ``(B, t·h·w, D)`` with the mask token
        at dropped positions, and the full-map index of every kept token ``(B, S + n)``."""
        t, h, w = grid
        S, (B, _, D) = h * w, z.shape
        pos_idx = idx.sort(1).values if self.official_order else idx  # the released code's order quirk
        pos_idx = torch.where(pos_idx < key * S, pos_idx, pos_idx + S)  # skip over the keyframe slice
        key_idx = torch.arange(key * S, (key + 1) * S, device=z.device).expand(B, S)
        full_idx = torch.cat([key_idx, pos_idx], 1)  # (B, S + n)
        full = self.mask_token.expand(B, t * S, D).scatter(1, full_idx[..., None].expand(-1, -1, D), z)
        return full, full_idx

    def actor_features(self, full: torch.Tensor, boxes: torch.Tensor, grid, image_size) -> torch.Tensor:
        """One feature per actor: ``full (B, t·h·w, D)`` time-major map, ``boxes (B, P, 4)`` xyxy
        pixels (unclipped) → ``(B, P, D)``. Each box is extended (:func:`extend_boxes`), RoIAligned
        (7×7, aligned, sampling 2) on every time slice, max-pooled over space, averaged over time."""
        t, h, w = grid
        B, P, D = boxes.shape[0], boxes.shape[1], full.shape[-1]
        maps = full.view(B, t, h, w, D).permute(0, 1, 4, 2, 3).reshape(B * t, D, h, w)  # (B·t, D, h, w)
        rois = extend_boxes(boxes, self.roi_extension, *image_size)
        rois = rois[:, None].expand(B, t, P, 4).reshape(B * t, P, 4)  # the same boxes on every slice
        feat = roi_align(maps, rois, 7, 1.0 / self.patch_size, 2)  # (B·t, P, D, 7, 7)
        return feat.amax((-2, -1)).view(B, t, P, D).mean(1)  # spatial max, temporal mean: (B, P, D)

    def forward(self, tokens, idx, grid, key, boxes, image_size):
        """``tokens (B, S + n, C)`` kept tokens (keyframe first), ``idx (B, n)`` their non-keyframe
        positions, ``boxes (B, P, 4)`` final actor boxes (unclipped) → list of per-layer ``(B, P, A)``
        logits."""
        B, P = boxes.shape[:2]
        z = self.encoder_to_decoder(tokens)  # (B, S + n, D)
        D = z.shape[-1]
        full, full_idx = self.restore(z, idx, grid, key)
        pos = self.pos_embed(grid, z).expand(B, -1, -1)  # (B, t·S, D)
        full = full + pos
        actors = self.actor_features(full, boxes, grid, image_size)  # (B, P, D)
        x = torch.cat(
            [z + pos.gather(1, full_idx[..., None].expand(-1, -1, D)), actors], 1
        )  # (B, S + n + P, D)
        logits = []
        for blk in self.decoder.blocks:
            x, _ = blk(x)
            logits.append(blk.head(x[:, -P:]))
        return logits


class EVAD(nn.Module):
    def __init__(
        self,
        num_classes: int = 80,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        keep_rate: float = 1.0,
        prune_layers: tuple[int, ...] = (3, 6, 9),
        keyframe_weight: float = 1.0,
        fpn_indices: tuple[int, ...] = (2, 5, 8, 11),
        fpn_dim: int = 256,
        num_proposals: int = 100,
        num_stages: int = 6,
        decoder_dim: int = 384,
        decoder_depth: int = 6,
        decoder_heads: int = 6,
        act_dim: int = 2048,
        roi_extension: tuple[float, float] = (0.4, 0.2),
        drop_path_rate: float = 0.1,
        decoder_drop_path_rate: float = 0.1,
        person_threshold: float = 0.7,
        action_weight: float = 12.0,
        pretrain_size: int = 224,
        official_order: bool = False,
        in_chans: int = 3,
    ):
        super().__init__()
        self.num_classes, self.num_frames, self.embed_dim = num_classes, num_frames, embed_dim
        self.keep_rate, self.keyframe_weight = keep_rate, keyframe_weight
        self.fpn_indices = tuple(fpn_indices)
        self.person_threshold = person_threshold
        self.pretrain_grid = pretrain_size // patch_size
        self.patch_embed = TubeletEmbed(patch_size, tubelet_size, in_chans, embed_dim)
        keep_rates = [keep_rate if i in prune_layers else 1.0 for i in range(depth)]
        self.blocks = make_blocks(
            depth, embed_dim, num_heads, keep_rates, keyframe_weight, not official_order, drop_path_rate,
            mlp_ratio=mlp_ratio,
        )  # fmt: skip
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.fpn = FPN(
            embed_dim, fpn_dim, scales=tuple(patch_size / s for s in (4, 8, 16, 32))
        )  # strides 4..32
        self.sparse_rcnn = SparseRCNN(fpn_dim, num_proposals, num_stages)
        self.det_head = ContextHead(
            embed_dim, num_classes, decoder_dim, decoder_depth, decoder_heads, act_dim, decoder_drop_path_rate,
            roi_extension, self.pretrain_grid, official_order, patch_size,
        )  # fmt: skip
        self.criterion = DetectionCriterion(action_weight=action_weight)
        self._pos = {}

    def pos_embed(self, grid, ref: torch.Tensor) -> torch.Tensor:
        """Fixed sinusoid table of the pre-training grid, bicubic-resized per slice: ``(1, t·h·w, C)``."""
        key = (tuple(grid), ref.device, ref.dtype)
        if key not in self._pos:
            base = (grid[0], self.pretrain_grid, self.pretrain_grid)
            self._pos[key] = sinusoid_table_3d(tuple(grid), base, self.embed_dim).to(ref)
        return self._pos[key]

    def forward_features(self, x: torch.Tensor):
        """Encoder: ``x (B, 3, T, H, W)`` → kept tokens ``(B, S + n, C)`` (final norm), ``idx (B, n)``,
        four keyframe maps ``(B, C, h, w)``, grid ``(t, h, w)`` and the keyframe slot."""
        B = x.shape[0]
        tokens, grid = self.patch_embed(x)  # (B, t·h·w, C) time-major
        tokens = tokens + self.pos_embed(grid, tokens)
        tokens, key = keyframe_first(tokens, grid[0])
        S = grid[1] * grid[2]
        idx = torch.arange(tokens.shape[1] - S, device=x.device).expand(B, -1)
        maps = []
        for i, blk in enumerate(self.blocks):
            tokens, idx = blk(tokens, idx, S)
            if i in self.fpn_indices:
                maps.append(tokens[:, :S].transpose(1, 2).reshape(B, -1, grid[1], grid[2]))  # (B, C, h, w)
        return self.norm(tokens), idx, maps, grid, key

    def forward(self, x: torch.Tensor, targets: list[dict] | None = None):
        H, W = x.shape[-2:]
        ph, pw = -H % 32, -W % 32
        if ph or pw:  # the FPN needs a multiple of 32 (Detectron2's size_divisibility)
            x = F.pad(x, (0, pw, 0, ph))
        tokens, idx, maps, grid, key = self.forward_features(x)
        logits, boxes, _ = self.sparse_rcnn(self.fpn(maps), (H, W))
        # the context head extends the unclipped final boxes (then clips), as the official head does
        actions = self.det_head(tokens, idx, grid, key, boxes[-1].detach(), (H, W))
        final = clip_boxes(boxes[-1].detach(), H, W)
        if targets is not None:
            targets = [
                {
                    "labels": torch.zeros(len(t["boxes"]), dtype=torch.int64, device=x.device),
                    "size": (H, W),
                    **t,
                }
                for t in targets
            ]
            return self.criterion(logits, boxes, actions, targets)
        return self.postprocess(logits[-1], final, actions[-1])

    @torch.no_grad()
    def postprocess(self, logits, boxes, actions) -> list[DetectionOutput]:
        """Keep actors with person probability ≥ ``person_threshold`` (all of them if none passes)."""
        person = logits.softmax(-1)[..., 0]  # (B, P)
        probs = actions.sigmoid()  # (B, P, A)
        out = []
        for p, b, a in zip(person, boxes, probs):
            if p.is_meta:  # GMAC counting on the meta device: no values to threshold, keep every box
                out.append(DetectionOutput(b, p, a.argmax(-1), a))
                continue
            keep = p >= self.person_threshold
            keep = keep if keep.any() else torch.ones_like(keep)
            out.append(DetectionOutput(b[keep], p[keep], a[keep].argmax(-1), a[keep]))
        return out

    # -- model API -------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.det_head.decoder.blocks[-1].action_logits

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        for blk in self.det_head.decoder.blocks:
            old = blk.action_logits
            blk.action_logits = nn.Linear(old.in_features, num_classes).to(old.weight)

    def no_weight_decay(self) -> set[str]:
        return {"det_head.mask_token"}

    def head_parameter_names(self) -> set[str]:
        """Parameters that the official recipe trains at 8× the base LR (``det_head.*`` there)."""
        names = {n for n, _ in self.named_parameters()}
        return {n for n in names if n.startswith(("det_head.", "sparse_rcnn.head_series."))}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: EVAD) -> dict[str, torch.Tensor]:
    """Official EVAD (PySlowFast ``model_state``) or VideoMAE-pretrained keys → kinetix.

    EVAD: ``fpn_lateral*``/``fpn_output*`` → ``fpn.*``; ``init_proposal_*`` → ``sparse_rcnn.*``;
    ``det_head.s0_headseries.*`` → ``sparse_rcnn.head_series.*``; the rest keeps its name.
    VideoMAE (official, ``encoder.``/``backbone.``/``module.`` prefixes stripped, or Hugging Face): the encoder loads as is, its
    pre-training ``decoder.*``/``encoder_to_decoder``/``mask_token`` become ``det_head.*`` (as the
    official loader does) where shapes fit; keys the source lacks (FPN, heads) keep the model's
    initialisation, so a backbone checkpoint initialises the detector."""
    own = model.state_dict()
    if any(k.startswith("videomae.") for k in state_dict):  # Hugging Face VideoMAE* encoder
        state_dict = _videomae_from_hf(state_dict)
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "backbone.", "encoder."):
            k = k.removeprefix(prefix)
        if k.startswith(("fpn_lateral", "fpn_output")):
            k = "fpn." + k
        elif k.startswith("init_proposal_"):
            k = "sparse_rcnn." + k
        elif k.startswith("det_head.s0_headseries."):
            k = k.replace("det_head.s0_headseries.", "sparse_rcnn.head_series.")
        elif k.startswith(("decoder.", "encoder_to_decoder.", "mask_token")):
            k = "det_head." + k
            if k in own and own[k].shape != v.shape:
                continue  # the pre-training decoder initialises the head only where shapes fit
        if k in own:  # another shape: the strict loader names it (or resets a classifier of other size)
            out[k] = v
    if not any(k.startswith("blocks.") for k in out):
        return dict(state_dict)  # nothing recognised: let the strict loader report the keys
    return {**own, **out}


_CFG = PretrainedCfg(
    num_frames=16,
    input_size=288,
    mean=KINETICS_MEAN,
    std=KINETICS_STD,
    sampling="dense",
    frame_interval=4,
    num_classes=80,
    source="https://github.com/MCG-NJU/EVAD",
    licence="CC-BY-NC-4.0 (official weights)",
    paper_metrics={"ava22_map": {"keep1.0": 32.1, "keep0.7": 32.3, "keep0.6_ew4": 31.8}},
)


def _kw(defaults: dict, kwargs: dict) -> dict:
    return {**defaults, **kwargs}


@register_model(cfgs={"ava22_16x4": _CFG})
def evad_vit_base(**kwargs) -> EVAD:
    """EVAD ViT-B/16, 16×4; pruning at blocks 4, 7, 10 (``keep_rate=0.7`` in the paper)."""
    return EVAD(**_kw({"keep_rate": 0.7}, kwargs))


@register_model(cfgs={"ava22_16x4": _CFG.replace(paper_metrics={"ava22_map": {"keep0.7": 39.7}})})
def evad_vit_large(**kwargs) -> EVAD:
    """EVAD ViT-L/16, 16×4; pruning at blocks 7, 13, 19; CRD 12 layers × 512 (8 heads)."""
    d = dict(
        embed_dim=1024, depth=24, num_heads=16, keep_rate=0.7, prune_layers=(6, 12, 18),
        fpn_indices=(5, 11, 17, 23), decoder_dim=512, decoder_depth=12, decoder_heads=8,
        drop_path_rate=0.2, action_weight=6.0,
    )  # fmt: skip
    return EVAD(**_kw(d, kwargs))


@register_model(cfgs={"": PretrainedCfg(num_frames=8, input_size=64, mean=KINETICS_MEAN, std=KINETICS_STD,
                                        sampling="dense", frame_interval=2, num_classes=4)})  # fmt: skip
def test_evad(**kwargs) -> EVAD:
    """Tiny EVAD for tests: 4 blocks of width 48, pruning at block 2, 10 proposals, 2 stages."""
    d = dict(
        num_frames=8, embed_dim=48, depth=4, num_heads=3, keep_rate=0.7, prune_layers=(1, 2),
        fpn_indices=(0, 1, 2, 3), fpn_dim=32, num_proposals=10, num_stages=2, decoder_dim=32,
        decoder_depth=2, decoder_heads=2, act_dim=64, drop_path_rate=0.0, decoder_drop_path_rate=0.0,
    )  # fmt: skip
    return EVAD(**_kw(d, kwargs))
