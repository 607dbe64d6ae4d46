"""The detection task (EVAD on AVA-format data): config -> (DetectionModule, DataModule), evaluation,
and detection on video files.

Same skeleton as :mod:`kinetix.engine.classification` (see :mod:`kinetix.engine.task`), dispatched
from ``task: detection``: ``build(cfg, stage, checkpoint=None)``, ``evaluate(cfg, checkpoint, out_dir)``.

Config keys (besides the shared sections): ``data.root`` (folder of the annotation files),
``data.train_ann`` / ``val_ann`` / ``test_ann`` (AVA CSVs), ``data.input_size`` (short side; null: the
model's), ``data.flip``; and in ``extra``:

* ``label_map`` (pbtxt, required), ``exclusions`` (CSV of excluded keyframes),
* ``video_root`` (folder of ``<video_id>.<ext>``, relative to ``data.root``; default ``data.root``),
* ``time_offset`` (seconds subtracted from timestamps; 900 for the official AVA cuts, 0 otherwise),
* ``head_lr_scale`` (LR multiplier of the heads, 8 as in EVAD), ``subset_60`` (evaluate the 60 AVA
  challenge classes), ``protocol`` (``activitynet``: the official evaluator, or ``slowfast``: EVAD's,
  see :mod:`kinetix.detection.ava`), ``capacity`` (detections kept per keyframe, activitynet: 50).

Validation (``val/mAP``) and ``kinetix test`` apply the same protocol; ``kinetix test`` reports
:func:`kinetix.detection.ava.evaluate` of the ``predictions.csv`` it writes, so the two agree exactly.

Batches from :func:`kinetix.data.datasets.collate_detection`: ``video (B, C, T, H, W)``, per-clip
``boxes (M, 4)`` pixels and multi-hot ``labels (M, K)`` (index = label-map id − 1), ``meta``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kinetix.data.datasets import AVADataset, collate_detection
from kinetix.data.io import open_video
from kinetix.data.sampling import keyframe_indices
from kinetix.data.transforms import detection_transform
from kinetix.detection import ava
from kinetix.errors import ConfigError, DatasetError
from kinetix.utils.inference import fast_inference
from kinetix.utils.state_dict import atomic_paths

from .badsamples import BadSampleTracker
from .datamodule import VideoDataModule, fingerprint_files, resolve_data_settings
from .task import TaskModule, build_model, load_weights, model_from_checkpoint, resolve_path
from .trainer import build_trainer

MONITOR = "val/mAP"  # the metric a `best` checkpoint tracks for this task

EXTRA_DEFAULTS = {
    "label_map": None,
    "exclusions": None,
    "video_root": None,
    "time_offset": 0.0,
    "head_lr_scale": 8.0,
    "subset_60": False,
    "protocol": "activitynet",
    "capacity": 50,
}


def extra_settings(cfg) -> dict:
    unknown = set(cfg.extra) - set(EXTRA_DEFAULTS)
    if unknown:
        raise ConfigError(f"extra: unknown detection keys {sorted(unknown)}; known: {sorted(EXTRA_DEFAULTS)}")
    ex = {**EXTRA_DEFAULTS, **cfg.extra}
    if ex["protocol"] not in ava.PROTOCOLS:
        raise ConfigError(f"extra.protocol: {ex['protocol']!r} is not one of {', '.join(ava.PROTOCOLS)}")
    return ex


def rows_from_outputs(outputs, metas, class_ids: list[int]) -> dict:
    """``{(video_id, timestamp): [(box normalised (4,), action_id, score), ...]}`` of a batch."""
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


class DetectionModule(TaskModule):
    """Train / evaluate a detector whose ``forward(x, targets)`` returns losses and ``forward(x)``
    a list of :class:`~kinetix.detection.evad.DetectionOutput`."""

    def __init__(self, model, cfg, label_map: dict[int, str], meta: dict | None = None):
        num_classes = int(model.pretrained_cfg.num_classes)
        self_ids = list(range(1, num_classes + 1))  # model index k <-> label-map id k + 1
        super().__init__(model, cfg, [label_map.get(i, str(i)) for i in self_ids], meta)
        self.label_map = dict(label_map)
        self.class_ids = self_ids
        self.extra = extra_settings(cfg)
        self.eval_ids = [c for c in self.class_ids if c in self.label_map]  # the label-map whitelist
        if self.extra["subset_60"]:
            self.eval_ids = [c for c in self.eval_ids if c in ava.AVA_60_CLASSES]
        self._gt, self._det = {}, {}
        self.test_results: dict = {}

    def head_lr_mult(self) -> float:
        return float(self.extra["head_lr_scale"])

    def training_step(self, batch, batch_idx):
        targets = [{"boxes": b, "actions": y} for b, y in zip(batch["boxes"], batch["labels"])]
        losses = self.model(batch["video"], targets)
        loss = losses["loss"]
        self.check_finite(loss)
        n = len(targets)
        for k, v in losses.items():
            self.log(
                f"train/{k}", v.detach(), prog_bar=k == "loss", on_step=True, on_epoch=True, batch_size=n
            )
        return loss

    # evaluation: collect AVA rows, frame-mAP at the end
    def _collect(self, batch) -> None:
        if "video" not in batch:  # every clip of the batch was unreadable (skipped and counted)
            return
        outputs = self.eval_model(batch["video"])
        self._det.update(rows_from_outputs(outputs, batch["meta"], self.class_ids))
        self._gt.update(gt_rows(batch, self.class_ids))

    def frame_map(self) -> dict:
        """Frame-mAP (percent) of the collected rows under the configured protocol."""
        return ava.frame_map(
            self._gt,
            self._det,
            self.eval_ids,
            protocol=self.extra["protocol"],
            capacity=self.extra["capacity"],
        )

    def on_validation_epoch_start(self) -> None:
        self._gt, self._det = {}, {}

    def validation_step(self, batch, batch_idx):
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self.log("val/mAP", self.frame_map()["mAP"], prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._gt, self._det = {}, {}

    def test_step(self, batch, batch_idx):
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self.test_results = self.frame_map()


def _dataset(cfg, ann: Path, settings, mode: str, label_map: dict, ex: dict) -> AVADataset:
    short = settings.input_size
    transform = detection_transform(
        short, settings.mean, settings.std, settings.channel_order, settings.value_range,
        train=mode == "train", flip=cfg.data.flip,
    )  # fmt: skip
    video_root = (
        resolve_path(cfg, ex["video_root"], "extra.video_root")
        if ex["video_root"]
        else Path(cfg.data.root or ".")
    )
    return AVADataset(
        ann, video_root, label_map, num_frames=settings.num_frames, frame_interval=settings.frame_interval,
        exclusions=resolve_path(cfg, ex["exclusions"], "extra.exclusions"), transform=transform,
        short_side=short, time_offset=float(ex["time_offset"]), mode=mode,
        max_bad_fraction=cfg.data.max_bad_fraction, seed=cfg.seed,
    )  # fmt: skip


def _label_map(cfg, ex: dict) -> dict[int, str]:
    if ex["label_map"] is None:
        raise ConfigError("detection configs need extra.label_map (an AVA label-map .pbtxt)")
    return ava.read_label_map(resolve_path(cfg, ex["label_map"], "extra.label_map"))


def build(cfg, stage: str = "fit", checkpoint=None):
    """LightningModule and DataModule of a detection config for ``stage`` (``fit`` or ``test``)."""
    ex = extra_settings(cfg)
    label_map = _label_map(cfg, ex)
    anns = {
        s: resolve_path(cfg, getattr(cfg.data, f"{s}_ann"), f"data.{s}_ann") for s in ("train", "val", "test")
    }
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
    module = DetectionModule(
        model,
        cfg,
        label_map,
        meta={
            "dataset_fingerprint": fingerprint,
            "data_settings": dict(settings.__dict__),
            "label_map": label_map,
        },
    )
    dm = VideoDataModule(
        sets.get("train"), sets.get("val"), sets.get("test"), batch_size=cfg.data.batch_size,
        val_batch_size=cfg.data.val_batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed,
        class_names=module.class_names, fingerprint=fingerprint, collate_fn=collate_detection,
    )  # fmt: skip
    return module, dm


def evaluate(cfg, checkpoint, out_dir, *, trainer_kwargs=None, inference=fast_inference) -> dict:
    """Frame-mAP@0.5 of a checkpoint on the test (or val) split: writes ``predictions.csv`` (AVA
    format) and reports :func:`kinetix.detection.ava.evaluate` of it against the annotations, with
    ``per_class.csv`` and ``metrics.json`` in ``out_dir``. ``per_class`` maps each label-map id to
    ``(name, AP percent)``. ``inference(model) -> module`` is the inference path the detector runs
    through (default :func:`~kinetix.utils.inference.fast_inference`: eager vs oneDNN, measured on
    the first batch, the detections compared; EVAD does not export, so onnxruntime is refused)."""
    ex = extra_settings(cfg)
    module, dm = build(cfg, "test", checkpoint=checkpoint)
    load_weights(module, checkpoint)
    backends = module.run_eval_model_through(inference)  # the EMA weights where there are any
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = BadSampleTracker(cfg.data.max_bad_fraction)
    kwargs = dict(trainer_kwargs or {})
    kwargs["callbacks"] = [tracker, *kwargs.get("callbacks", [])]
    trainer = build_trainer(cfg, out_dir, stage="test", **kwargs)
    trainer.test(module, datamodule=dm, verbose=False)
    rows = [(vid, ts, *box, a, s) for (vid, ts), items in sorted(module._det.items()) for box, a, s in items]
    ann = resolve_path(cfg, cfg.data.test_ann or cfg.data.val_ann, "data.test_ann")
    labels = {c: module.label_map[c] for c in module.eval_ids}
    exclusions = resolve_path(cfg, ex["exclusions"], "extra.exclusions")
    skipped = sorted(tracker.bad["test"])
    names = ["metrics.json", "per_class.csv", "predictions.csv"] + ["excluded_unreadable.csv"] * bool(skipped)
    # all reports replaced together, or none (never two runs' mix); the predictions are scored
    # from their temporary file
    with atomic_paths(*(out_dir / n for n in names)) as (metrics, per_class, predictions, *excluded):
        ava.write_csv(predictions, rows)
        if skipped:  # keyframes whose clip is unreadable are left out of the evaluation, not scored as misses
            keys = {(k.video_id, int(k.timestamp)) for k in (dm.test_set.keyframes[i] for i in skipped)}
            keys |= ava.read_exclusions(exclusions) if exclusions else set()
            exclusions = excluded[0]
            exclusions.write_text("".join(f"{v},{t}\n" for v, t in sorted(keys)))
        res = ava.evaluate(
            ann, predictions, labels, exclusions=exclusions, protocol=ex["protocol"], capacity=ex["capacity"]
        )
        res.update(protocol=ex["protocol"], checkpoint=str(checkpoint), report_dir=str(out_dir))
        res.update(inference=backends())
        res.update(skipped=len(skipped), skipped_videos=sorted(set(tracker.paths(trainer, "test"))))
        lines = ["class_id,name,ap"] + [f"{c},{name},{ap:.4f}" for c, (name, ap) in res["per_class"].items()]
        per_class.write_text("\n".join(lines) + "\n")
        metrics.write_text(json.dumps(res, indent=2, default=str) + "\n")
    if not skipped:  # an earlier evaluation's list of unreadable keyframes is not this one's
        (out_dir / "excluded_unreadable.csv").unlink(missing_ok=True)
    return res


def load_detector(checkpoint: str | Path):
    """``(model, class_names, settings)`` from a kinetix checkpoint folder / run folder / weights
    file that carries its config (``kinetix train`` writes those)."""
    model, cfg, names = model_from_checkpoint(checkpoint)
    if cfg is None or cfg.task != "detection":
        what = "carries no config" if cfg is None else f"is a {cfg.task!r} checkpoint"
        raise ConfigError(
            f"{checkpoint}: {what}, not a trained detector (`kinetix train` on a detection config)"
        )
    if not names:
        raise ConfigError(f"{checkpoint}: carries no class names; was it written by `kinetix train`?")
    return model, names, resolve_data_settings(model.pretrained_cfg, cfg.data, cfg.eval)


def keyframe_clip(reader, key: int, settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The detector's input ``(3, T, h, w)`` for the clip centred on frame ``key`` of an open
    ``reader`` (opened with ``short_side=settings.input_size``: then frames and transform are
    those :class:`~kinetix.data.datasets.AVADataset` gives in test mode), and the clip's decoded
    frames ``(T, h, w, 3)`` uint8."""
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
    with open_video(video) as full:
        H, W = full.height, full.width
    with open_video(video, short_side=settings.input_size) as reader:  # decoded as AVADataset does
        n, fps = reader.num_frames, reader.fps
        keys = np.unique(np.round(np.arange(0.0, n / fps, every) * fps).astype(int).clip(0, n - 1))
        outs = []
        for s in range(0, len(keys), batch_size):
            clips = [keyframe_clip(reader, int(k), settings)[0] for k in keys[s : s + batch_size]]
            for o in model(torch.stack(clips)):
                h, w = clips[0].shape[-2:]
                o.boxes = o.boxes * torch.tensor([W / w, H / h, W / w, H / h])
                outs.append(o)
    return keys, outs, fps, (H, W)
