"""The detection task (EVAD on AVA-format data): config -> (LightningModule, DataModule), evaluation.

Same three functions as :mod:`kinetix.engine.classification`, dispatched from ``task: detection``:
``build(cfg, stage, checkpoint=None)``, ``evaluate(cfg, checkpoint, out_dir)``, ``predict(...)``.

Config keys (besides the shared sections): ``data.root`` (folder of the annotation files),
``data.train_ann`` / ``val_ann`` / ``test_ann`` (AVA CSVs), ``data.input_size`` (short side; null: the
model's), ``data.flip``; and in ``extra``:

* ``label_map`` (pbtxt, required), ``exclusions`` (CSV of excluded keyframes),
* ``video_root`` (folder of ``<video_id>.<ext>``, relative to ``data.root``; default ``data.root``),
* ``time_offset`` (seconds subtracted from timestamps; 900 for the official AVA cuts, 0 otherwise),
* ``head_lr_scale`` (LR multiplier of the heads, 8 as in EVAD), ``subset_60`` (evaluate the 60 AVA
  challenge classes), ``capacity`` (detections kept per keyframe in evaluation, 50).

Batches from :func:`kinetix.data.datasets.collate_detection`: ``video (B, C, T, H, W)``, per-clip
``boxes (M, 4)`` pixels and multi-hot ``labels (M, K)`` (index = label-map id − 1), ``meta``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from kinetix.data.datasets import collate_detection
from kinetix.detection import ava
from kinetix.errors import ConfigError, DatasetError
from kinetix.utils.state_dict import read_metadata_json

from .badsamples import BadSampleTracker
from .datamodule import VideoDataModule, fingerprint_files, resolve_data_settings
from .module import TrainingDivergedError, checkpoint_metadata, derive_seed, diverged_message
from .optim import build_scheduler

MONITOR = "val/mAP"  # the metric a `best` checkpoint should track for this task

EXTRA_DEFAULTS = {
    "label_map": None,
    "exclusions": None,
    "video_root": None,
    "time_offset": 0.0,
    "head_lr_scale": 8.0,
    "subset_60": False,
    "capacity": 50,
}


def extra_settings(cfg) -> dict:
    unknown = set(cfg.extra) - set(EXTRA_DEFAULTS)
    if unknown:
        raise ConfigError(f"extra: unknown detection keys {sorted(unknown)}; known: {sorted(EXTRA_DEFAULTS)}")
    return {**EXTRA_DEFAULTS, **cfg.extra}


def _path(cfg, value, key: str, must_exist: bool = True) -> Path | None:
    if value is None:
        return None
    p = given = Path(value)
    if not p.is_absolute() and cfg.data.root and not p.exists():
        p = Path(cfg.data.root) / p
    if must_exist and not p.exists():
        where = f"{given} or {p}" if p != given else str(p)
        raise ConfigError(f"{key}: no such file or folder: {where} (relative to {Path.cwd()})")
    return p


class DetectionDataModule(VideoDataModule):
    """:class:`VideoDataModule` whose loaders batch with ``collate_detection``."""

    collate = staticmethod(collate_detection)


def rows_from_outputs(outputs, metas, class_ids: list[int]) -> dict:
    """``{(video_id, timestamp): [(box normalised (4,), action_id, score), ...]}`` of a batch."""
    import numpy as np

    out = {}
    ids = np.asarray(class_ids)
    for o, meta in zip(outputs, metas):
        h, w = meta["input_size"]
        boxes = (o.boxes.float().cpu() / torch.tensor([w, h, w, h])).clamp(0, 1).numpy()
        scores = o.action_scores.float().cpu().numpy()  # (n, K)
        rows = [
            (boxes[i], int(ids[k]), float(scores[i, k])) for i in range(len(boxes)) for k in range(len(ids))
        ]
        out[(meta["video_id"], int(meta["timestamp"]))] = rows
    return out


def gt_rows(batch, class_ids: list[int]) -> dict:
    out = {}
    for boxes, labels, meta in zip(batch["boxes"], batch["labels"], batch["meta"]):
        h, w = meta["input_size"]
        b = (boxes.float().cpu() / torch.tensor([w, h, w, h])).numpy()
        rows = [(b[i], class_ids[k], 1.0) for i, k in zip(*torch.nonzero(labels.cpu(), as_tuple=True))]
        out[(meta["video_id"], int(meta["timestamp"]))] = [(r[0], int(r[1]), r[2]) for r in rows]
    return out


class DetectionModule(pl.LightningModule):
    """Train / evaluate a detector whose ``forward(x, targets)`` returns losses and ``forward(x)``
    a list of :class:`~kinetix.detection.evad.DetectionOutput`."""

    def __init__(self, model, cfg, label_map: dict[int, str], meta: dict | None = None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.label_map = dict(label_map)
        self.num_classes = int(model.pretrained_cfg.num_classes)
        self.class_ids = list(range(1, self.num_classes + 1))  # model index k <-> label-map id k + 1
        self.class_names = [self.label_map.get(i, str(i)) for i in self.class_ids]
        self.meta = dict(meta or {})
        self.extra = extra_settings(cfg)
        self.ema = None
        self._gt, self._det = {}, {}
        self.test_results: dict = {}

    def forward(self, x):
        return self.model(x)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        torch.manual_seed(derive_seed(self.cfg.seed, self.global_step, self.global_rank, 1))

    def training_step(self, batch, batch_idx):
        targets = [{"boxes": b, "actions": y} for b, y in zip(batch["boxes"], batch["labels"])]
        losses = self.model(batch["video"], targets)
        loss = losses["loss"]
        if not bool(torch.isfinite(loss.detach())):
            raise TrainingDivergedError(diverged_message(self, loss))
        n = len(targets)
        for k, v in losses.items():
            self.log(
                f"train/{k}", v.detach(), prog_bar=k == "loss", on_step=True, on_epoch=True, batch_size=n
            )
        return loss

    def configure_optimizers(self):
        o = self.cfg.optim
        skip = set(self.model.no_weight_decay())
        heads = getattr(self.model, "head_parameter_names", set)()
        groups: dict[tuple, dict] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = (o.no_decay_1d and p.ndim <= 1) or name in skip
            scale = float(self.extra["head_lr_scale"]) if name in heads else 1.0
            g = groups.setdefault((no_decay, scale), {"params": [], "lr": o.lr * scale, "lr_scale": scale,
                                                      "weight_decay": 0.0 if no_decay else o.weight_decay})  # fmt: skip
            g["params"].append(p)
        groups = list(groups.values())
        if o.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        else:
            opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = build_scheduler(opt, self.cfg.schedule, total, total / max(1, self.trainer.max_epochs or 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # evaluation: collect AVA rows, frame-mAP at the end
    def _collect(self, batch) -> None:
        if "video" not in batch:  # every clip of the batch was unreadable (skipped and counted)
            return
        outputs = self.model(batch["video"])
        self._det.update(rows_from_outputs(outputs, batch["meta"], self.class_ids))
        self._gt.update(gt_rows(batch, self.class_ids))

    def _frame_map(self) -> dict:
        ids = self.class_ids
        if self.extra["subset_60"]:
            ids = [c for c in ids if c in ava.AVA_60_CLASSES]
        det = {k: sorted(v, key=lambda r: -r[2])[: self.extra["capacity"]] for k, v in self._det.items()}
        aps = ava.frame_ap(self._gt, det, ids)
        valid = [v for v in aps.values() if v == v]
        return {"mAP": 100.0 * sum(valid) / len(valid) if valid else float("nan"),
                "per_class": {c: 100.0 * ap for c, ap in aps.items()}}  # fmt: skip

    def on_validation_epoch_start(self) -> None:
        self._gt, self._det = {}, {}

    def validation_step(self, batch, batch_idx):
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self.log("val/mAP", self._frame_map()["mAP"], prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._gt, self._det = {}, {}

    def test_step(self, batch, batch_idx):
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._frame_map()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["kinetix"] = checkpoint_metadata(self)


def _dataset(cfg, ann: Path, settings, mode: str, label_map: dict, ex: dict):
    from kinetix.data.datasets import AVADataset
    from kinetix.data.transforms import detection_transform

    short = settings.input_size
    transform = detection_transform(
        short, settings.mean, settings.std, settings.channel_order, settings.value_range,
        train=mode == "train", flip=cfg.data.flip,
    )  # fmt: skip
    video_root = (
        _path(cfg, ex["video_root"], "extra.video_root") if ex["video_root"] else Path(cfg.data.root or ".")
    )
    return AVADataset(
        ann, video_root, label_map, num_frames=settings.num_frames, frame_interval=settings.frame_interval,
        exclusions=_path(cfg, ex["exclusions"], "extra.exclusions"), transform=transform, short_side=short,
        time_offset=float(ex["time_offset"]), mode=mode, max_bad_fraction=cfg.data.max_bad_fraction,
        seed=cfg.seed,
    )  # fmt: skip


def build(cfg, stage: str = "fit", checkpoint=None):
    """LightningModule and DataModule of a detection config for ``stage`` (``fit`` or ``test``)."""
    from .classification import build_model

    ex = extra_settings(cfg)
    if ex["label_map"] is None:
        raise ConfigError("detection configs need extra.label_map (an AVA label-map .pbtxt)")
    label_map = ava.read_label_map(_path(cfg, ex["label_map"], "extra.label_map"))
    anns = {s: _path(cfg, getattr(cfg.data, f"{s}_ann"), f"data.{s}_ann") for s in ("train", "val", "test")}
    if stage == "fit" and anns["train"] is None:
        raise ConfigError("training needs data.train_ann (an AVA CSV)")
    if stage != "fit" and anns["test"] is None and anns["val"] is None:
        raise ConfigError("evaluation needs data.test_ann or data.val_ann (an AVA CSV)")
    model = build_model(cfg, max(label_map))
    settings = resolve_data_settings(model.pretrained_cfg, cfg.data, cfg.eval)
    sets = {}
    if stage == "fit":
        sets["train"] = _dataset(cfg, anns["train"], settings, "train", label_map, ex)
        if anns["val"] is not None:
            sets["val"] = _dataset(cfg, anns["val"], settings, "val", label_map, ex)
    else:
        sets["test"] = _dataset(cfg, anns["test"] or anns["val"], settings, "test", label_map, ex)
    for split, ds in sets.items():
        if len(ds) == 0:
            raise DatasetError(f"the {split} split has no annotated keyframes")
    fingerprint = fingerprint_files(anns.values())
    dm = DetectionDataModule(
        sets.get("train"), sets.get("val"), sets.get("test"), batch_size=cfg.data.batch_size,
        val_batch_size=cfg.data.val_batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed,
        class_names=[label_map.get(i, str(i)) for i in range(1, max(label_map) + 1)], fingerprint=fingerprint,
    )  # fmt: skip
    meta = {
        "dataset_fingerprint": fingerprint,
        "data_settings": dict(settings.__dict__),
        "label_map": label_map,
    }
    return DetectionModule(model, cfg, label_map, meta=meta), dm


def evaluate(cfg, checkpoint, out_dir, *, trainer_kwargs=None, quiet: bool = False) -> dict:
    """Frame-mAP@0.5 of a checkpoint on the test (or val) split; writes ``predictions.csv`` (AVA
    format), ``per_class.csv`` and ``metrics.json`` into ``out_dir``."""
    from .run import build_trainer, load_weights

    module, dm = build(cfg, "test", checkpoint=checkpoint)
    load_weights(module, checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = BadSampleTracker(cfg.data.max_bad_fraction)
    kwargs = dict(trainer_kwargs or {})
    kwargs["callbacks"] = [tracker, *kwargs.get("callbacks", [])]
    trainer = build_trainer(cfg, out_dir, stage="test", **kwargs)
    trainer.test(module, datamodule=dm, verbose=False)
    res = dict(module.test_results)
    res["checkpoint"] = str(checkpoint)
    # keyframes whose clip is unreadable are skipped (their ground truth too), never substituted
    res.update(skipped=tracker.counts()["test"], skipped_videos=sorted(set(tracker.paths(trainer, "test"))))
    if trainer.is_global_zero:
        rows = [
            (vid, ts, *box, a, s) for (vid, ts), items in sorted(module._det.items()) for box, a, s in items
        ]
        ava.write_csv(out_dir / "predictions.csv", rows)
        lines = ["class_id,name,ap"] + [
            f"{c},{module.label_map.get(c, c)},{ap:.4f}" for c, ap in res["per_class"].items()
        ]
        (out_dir / "per_class.csv").write_text("\n".join(lines) + "\n")
        (out_dir / "metrics.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res


def load_detector(checkpoint: str | Path):
    """``(model, class_names, settings)`` from a kinetix checkpoint folder / run folder / weights
    file that carries its config (``kinetix train`` writes those)."""
    from kinetix.models import create_model

    from .run import checkpoint_config, load_weights

    cfg = checkpoint_config(checkpoint)
    if cfg.task != "detection":
        raise ConfigError(f"{checkpoint}: is a {cfg.task!r} checkpoint, not a detection one")
    names = _checkpoint_class_names(checkpoint)
    kwargs = {**cfg.model.kwargs, "num_classes": len(names)}
    if cfg.model.num_frames is not None:
        kwargs["num_frames"] = cfg.model.num_frames
    model = create_model(cfg.model.name, **kwargs)

    class _Holder:  # load_weights works on anything with a .model (and an optional .ema)
        ema = None

    holder = _Holder()
    holder.model = model
    load_weights(holder, checkpoint)
    settings = resolve_data_settings(model.pretrained_cfg, cfg.data, cfg.eval)
    return model.eval(), names, settings


def _checkpoint_class_names(checkpoint) -> list[str]:
    from .checkpoint import read_manifest

    path = Path(checkpoint)
    if path.is_file():
        names = read_metadata_json(path, "class_names", list)
    else:
        names = read_manifest(path).get("class_names")
    if not names:
        raise ConfigError(f"{checkpoint}: carries no class names; was it written by `kinetix train`?")
    return list(names)


def keyframe_clip(reader, key: int, settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The detector's input ``(3, T, h, w)`` for the clip centred on frame ``key`` of an open
    ``reader``, and the clip's decoded frames ``(T, H, W, 3)`` uint8."""
    from kinetix.data.sampling import keyframe_indices
    from kinetix.data.transforms import detection_transform

    transform = detection_transform(settings.input_size, settings.mean, settings.std, settings.channel_order,
                                    settings.value_range, train=False)  # fmt: skip
    frames = reader.get_frames(
        keyframe_indices(key, settings.num_frames, settings.frame_interval, reader.num_frames)
    )
    return transform(frames, {"boxes": torch.zeros(0, 4)})[0], frames


@torch.no_grad()
def detect_video(model, video, settings, every: float = 1.0, batch_size: int = 2):
    """Run a detector at keyframes every ``every`` seconds of ``video``.

    Returns ``(keyframes, detections, fps, size)``: keyframe frame indices, one
    :class:`~kinetix.detection.evad.DetectionOutput` per keyframe with boxes in the video's own
    pixels, the frame rate and ``(H, W)``."""
    import numpy as np

    from kinetix.data.io import open_video

    with open_video(video) as reader:
        n, fps = reader.num_frames, reader.fps
        H, W = reader.height, reader.width
        keys = np.unique(np.round(np.arange(0.0, n / fps, every) * fps).astype(int).clip(0, n - 1))
        outs = []
        for s in range(0, len(keys), batch_size):
            clips = [keyframe_clip(reader, int(k), settings)[0] for k in keys[s : s + batch_size]]
            for o in model(torch.stack(clips)):
                h, w = clips[0].shape[-2:]
                o.boxes = o.boxes * torch.tensor([W / w, H / h, W / w, H / h])
                outs.append(o)
    return keys, outs, fps, (H, W)


def predict(cfg, videos, checkpoint=None, model_name=None, **kwargs) -> list[dict]:
    """Detections at 1 s keyframes of each video: ``[{"video", "keyframes", "detections"}]``."""
    if checkpoint is None:
        raise ConfigError("detection predictions need --checkpoint (a trained detector)")
    model, names, settings = load_detector(checkpoint)
    res = []
    for v in videos:
        keys, dets, fps, _ = detect_video(model, v, settings)
        res.append({"video": str(v), "keyframes": keys.tolist(), "fps": fps, "detections": dets,
                    "class_names": names})  # fmt: skip
    return res
