"""The classification task: config -> (ClassificationModule, VideoDataModule), evaluation, prediction.

Like every task module (see :mod:`kinetix.engine.task`), it provides ``build(cfg, stage,
checkpoint=None) -> (LightningModule, LightningDataModule)`` and ``evaluate(cfg, checkpoint,
out_dir) -> dict``; :mod:`kinetix.engine.run` dispatches to them from the config's ``task``.
Test views, in the dataset and in :func:`predict_videos` alike, come from
:func:`kinetix.data.views.load_test_views`' building blocks.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from kinetix.data.datasets import VideoClassificationDataset, load_annotations
from kinetix.data.transforms import train_transform
from kinetix.data.views import decode_short_side, load_test_views, test_view_transform
from kinetix.errors import CheckpointError, ConfigError, DatasetError, KinetixError
from kinetix.utils.inference import fast_inference
from kinetix.utils.state_dict import atomic_paths

from .badsamples import BadSampleTracker
from .checkpoint import read_manifest
from .datamodule import VideoDataModule, fingerprint_files, resolve_data_settings
from .module import ClassificationModule
from .multiview import check_views, predict_views
from .task import build_model, load_weights, resolve_path
from .trainer import build_trainer

MONITOR = "val/top1"  # the metric a `best` checkpoint tracks for this task
load_clip_views = load_test_views  # the earlier name, kept for callers of the engine


def read_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such classes file (data.classes): one class name per line")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise ConfigError(f"{path}: the classes file is empty")
    return names


def _make_dataset(cfg, ann: Path, settings, mode: str, classes=None) -> VideoClassificationDataset:
    d = cfg.data
    if mode == "train":
        transform = train_transform(
            settings.input_size,
            settings.mean,
            settings.std,
            settings.channel_order,
            settings.value_range,
            scale_jitter=d.scale_jitter,
            flip=d.flip,
            flip_label_map={int(k): int(v) for k, v in (d.flip_label_map or {}).items()} or None,
            randaugment=tuple(d.randaugment) if d.randaugment else None,
            erase_prob=d.erase_prob,
            color_jitter=d.color_jitter,
        )
        clips = 1
    else:  # validation: one centre view; test: the settings' views
        clips, crops = settings.test_views if mode == "test" else (1, 1)
        transform = test_view_transform(settings, crops)
    return VideoClassificationDataset.from_annotations(
        ann,
        d.root,
        format=d.format,
        classes=classes,
        num_frames=settings.num_frames,
        sampling=settings.sampling,
        frame_interval=settings.frame_interval,
        mode=mode,
        num_clips=clips,
        transform=transform,
        short_side=decode_short_side(settings),
        max_bad_fraction=d.max_bad_fraction,
        seed=cfg.seed,
        cache_decoded=d.cache_decoded,
    )


def _classes(cfg, ann: Path | None, checkpoint) -> tuple[list[str] | None, int | None]:
    """Class names (config file, checkpoint, annotations) and the number of classes."""
    if cfg.data.classes:
        names = read_class_names(cfg.data.classes)
        return names, len(names)
    if checkpoint is not None and not Path(checkpoint).is_file():
        names = read_manifest(checkpoint).get("class_names")
        if names:
            return list(names), len(names)
    if ann is None:
        return None, None
    records, names, _ = load_annotations(ann, cfg.data.format)
    if names:
        return list(names), len(names)
    return None, max((r.label for r in records), default=-1) + 1


def build(cfg, stage: str = "fit", checkpoint=None):
    """LightningModule and LightningDataModule for ``stage`` (``fit`` or ``test``)."""
    anns = {
        s: resolve_path(cfg, getattr(cfg.data, f"{s}_ann"), f"data.{s}_ann") for s in ("train", "val", "test")
    }
    if stage == "fit" and anns["train"] is None:
        raise ConfigError("training needs data.train_ann (an annotation file)")
    if stage != "fit" and anns["test"] is None and anns["val"] is None:
        raise ConfigError("evaluation needs data.test_ann or data.val_ann (an annotation file)")
    probe = anns["train"] if stage == "fit" else (anns["test"] or anns["val"])
    names, num_classes = _classes(cfg, probe, checkpoint)
    model = build_model(cfg, num_classes)
    k = model.pretrained_cfg.num_classes
    class_names = names if names and len(names) == k else [str(i) for i in range(k)]
    settings = resolve_data_settings(model.pretrained_cfg, cfg.data, cfg.eval)
    classes_arg = names if names and len(names) == k else None  # fixes the label order of every split
    sets = {}
    if stage == "fit":
        sets["train"] = _make_dataset(cfg, anns["train"], settings, "train", classes_arg)
        if anns["val"] is not None:
            sets["val"] = _make_dataset(cfg, anns["val"], settings, "val", classes_arg)
    else:
        sets["test"] = _make_dataset(cfg, anns["test"] or anns["val"], settings, "test", classes_arg)
    for split, ds in sets.items():
        if len(ds) == 0:
            raise DatasetError(f"the {split} split ({anns[split] or anns['val']}) has no samples")
    fingerprint = fingerprint_files(anns.values())
    dm = VideoDataModule(
        sets.get("train"),
        sets.get("val"),
        sets.get("test"),
        batch_size=cfg.data.batch_size,
        val_batch_size=cfg.data.val_batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        class_names=class_names,
        fingerprint=fingerprint,
    )
    meta = {"dataset_fingerprint": fingerprint, "data_settings": dict(settings.__dict__)}
    return ClassificationModule(model, cfg, class_names, meta=meta), dm


def top_classes(scores: torch.Tensor, class_names: list[str], topk: int) -> list[dict]:
    """``[{"label", "name", "prob"}]`` of the ``topk`` classes of one video's scores ``(K,)``."""
    probs = torch.softmax(scores.float(), -1)
    p, i = probs.topk(min(topk, len(probs)))
    return [{"label": int(j), "name": class_names[j], "prob": float(q)} for q, j in zip(p, i)]


def evaluate(cfg, checkpoint, out_dir, *, trainer_kwargs=None, inference=fast_inference) -> dict:
    """Multi-view test of a checkpoint: metrics dict; ``per_class.csv``, ``confusion.png``,
    ``metrics.json`` and ``predictions.jsonl`` (each video's top-5) in ``out_dir``.

    ``inference(model) -> module`` is the inference path the scored model runs through (default:
    :func:`~kinetix.utils.inference.fast_inference`, eager vs oneDNN, measured; ``kinetix test
    --backend`` passes :func:`kinetix.deploy.optimize_for_inference` with onnxruntime)."""
    module, dm = build(cfg, "test", checkpoint=checkpoint)
    load_weights(module, checkpoint)
    backends = module.run_eval_model_through(inference)  # the EMA weights where there are any
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = resolve_data_settings(module.model.pretrained_cfg, cfg.data, cfg.eval)
    dm.setup("test")
    n_views = settings.test_views[0] * settings.test_views[1]
    distinct = _distinct_views(dm.test_set, n_views)
    module.meta["checkpoint"] = str(checkpoint)
    tracker = BadSampleTracker(cfg.data.max_bad_fraction)
    kwargs = dict(trainer_kwargs or {})
    kwargs["callbacks"] = [tracker, *kwargs.get("callbacks", [])]
    trainer = build_trainer(cfg, out_dir, stage="test", **kwargs)
    trainer.test(module, datamodule=dm, verbose=False)
    skipped = tracker.paths(trainer, "test")
    if not getattr(module, "_test_parts", None):
        raise DatasetError(
            f"no video of the test set could be read ({len(skipped)} skipped, e.g. {skipped[:3]})"
        )
    res = dict(module.test_results)
    # unreadable videos are skipped, never scored in substitute: 'count' is the scored ones
    res.update(skipped=len(skipped), skipped_videos=skipped)
    meter = module.test_meter
    res.update(
        views=list(settings.test_views),
        distinct_views=distinct,
        aggregate=cfg.eval.aggregate,
        reverse_frames=cfg.eval.reverse_frames,
        checkpoint=str(checkpoint),
        report_dir=str(out_dir),
        inference=backends(),
    )
    if trainer.is_global_zero:  # all reports replaced together, or none (never two runs' mix)
        names = ("metrics.json", "per_class.csv", "confusion.png", "predictions.jsonl")
        with atomic_paths(*(out_dir / n for n in names)) as (metrics, per_class, confusion, predictions):
            meter.write_per_class_csv(per_class, module.class_names)
            meter.plot_confusion(
                confusion,
                module.class_names,
                f"{cfg.model.name}{' (time-reversed)' if cfg.eval.reverse_frames else ''}",
            )
            lines = [
                json.dumps({
                    "video": dm.test_set._sample_path(int(i)),
                    "label": int(dm.test_set.samples[int(i)].label),
                    "top": top_classes(s, module.class_names, 5),
                })
                for i, s in zip(module.test_index, module.test_scores)
            ]  # fmt: skip
            predictions.write_text("".join(line + "\n" for line in lines))
            metrics.write_text(json.dumps(res, indent=2) + "\n")
    res["meter"] = meter
    return res


def _distinct_views(dataset, n_views: int) -> int:
    """Distinct views of the first test sample (warns when some are duplicates)."""
    if n_views == 1 or len(dataset) == 0:
        return 1
    item = next((it for it in (dataset[i] for i in range(min(len(dataset), 8))) if "video" in it), None)
    if item is None:  # no readable video among the first ones: the test run reports them
        return 1
    video = item["video"]
    if video.dim() == 4:
        return 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = check_views(video)
    for w in caught:
        warnings.warn(str(w.message), stacklevel=2)
    return n


@torch.no_grad()
def predict_videos(
    model,
    videos,
    settings,
    class_names=None,
    topk: int = 5,
    aggregate: str = "logits",
    reverse_frames: bool = False,
    source: str | None = None,
) -> list[dict]:
    """Top-k classes of each video file, scored on its test views (:func:`load_test_views`).

    A video that cannot be read gets ``{"video", "error"}`` instead (the others are still
    predicted); scores that are not finite are a :class:`CheckpointError` naming ``source``."""
    model.eval()
    k = model.pretrained_cfg.num_classes
    names = class_names if class_names and len(class_names) == k else [str(i) for i in range(k)]
    out = []
    for path in videos:
        try:
            views = load_test_views(path, settings)  # (V, C, T, H, W)
        except KinetixError as e:
            out.append({"video": str(path), "error": str(e)})
            continue
        scores = predict_views(model, views[None], aggregate, reverse_frames)[0]  # (K,)
        if not bool(torch.isfinite(scores).all()):
            raise CheckpointError(
                f"{source or 'the model'}: gives non-finite scores (NaN/inf) on {path}; its weights "
                "are broken or overflow at this precision. Use another checkpoint"
            )
        out.append(
            {"video": str(path), "views": int(views.shape[0]), "top": top_classes(scores, names, topk)}
        )
    return out
