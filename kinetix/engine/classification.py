"""The classification task: config -> (model, LightningModule, LightningDataModule), and evaluation.

Every task module (this one, ``detection``) provides the same three functions, which
:mod:`kinetix.engine.run` dispatches to from the config's ``task`` key:

* ``build(cfg, stage, checkpoint=None) -> (LightningModule, LightningDataModule)``
* ``evaluate(cfg, checkpoint, out_dir, **options) -> dict`` (metrics; writes reports into out_dir)
* ``predict(cfg_or_none, videos, checkpoint=None, model_name=None, topk=5) -> list[dict]``
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from kinetix.errors import CheckpointError, ConfigError, DatasetError, KinetixError

from .badsamples import BadSampleTracker
from .datamodule import VideoDataModule, fingerprint_files, resolve_data_settings
from .module import ClassificationModule


def read_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such classes file (data.classes): one class name per line")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise ConfigError(f"{path}: the classes file is empty")
    return names


def _ann_path(cfg, name: str) -> Path | None:
    """``data.<name>_ann`` as given (relative to the current folder), else under ``data.root``."""
    value = getattr(cfg.data, f"{name}_ann")
    if value is None:
        return None
    p = Path(value)
    tried = [p]
    if not p.is_absolute() and cfg.data.root and not p.is_relative_to(Path(cfg.data.root)):
        tried.append(Path(cfg.data.root) / p)
    found = next((t for t in tried if t.is_file()), None)
    if found is None:
        where = " or ".join(str(t) for t in tried)
        raise ConfigError(
            f"data.{name}_ann: no such annotation file: {where} (relative to {Path.cwd()}); "
            f"set data.{name}_ann to the file's path"
        )
    return found


def _make_dataset(cfg, ann: Path, settings, mode: str, classes=None):
    from kinetix.data.datasets import VideoClassificationDataset
    from kinetix.data.transforms import test_transform, train_transform

    d = cfg.data
    norm = dict(
        mean=settings.mean,
        std=settings.std,
        channel_order=settings.channel_order,
        value_range=settings.value_range,
    )
    resize = settings.test_resize or settings.input_size * 256 // 224
    if mode == "train":
        transform = train_transform(
            settings.input_size,
            **norm,
            scale_jitter=d.scale_jitter,
            flip=d.flip,
            flip_label_map={int(k): int(v) for k, v in (d.flip_label_map or {}).items()} or None,
            randaugment=tuple(d.randaugment) if d.randaugment else None,
            erase_prob=d.erase_prob,
            color_jitter=d.color_jitter,
        )
        clips = 1
    else:
        clips, crops = settings.test_views if mode == "test" else (1, 1)
        transform = test_transform(settings.input_size, **norm, resize=resize, crops=crops)
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
        short_side=resize,
        max_bad_fraction=d.max_bad_fraction,
        seed=cfg.seed,
        cache_decoded=d.cache_decoded,
    )


def _classes(cfg, ann: Path | None, checkpoint) -> tuple[list[str] | None, int | None]:
    """Class names (config file, checkpoint, annotations) and the number of classes."""
    from kinetix.data.datasets import load_annotations

    if cfg.data.classes:
        names = read_class_names(cfg.data.classes)
        return names, len(names)
    if checkpoint is not None:
        from .checkpoint import read_manifest

        path = Path(checkpoint)
        if not path.is_file():
            names = read_manifest(path).get("class_names")
            if names:
                return list(names), len(names)
    if ann is None:
        return None, None
    records, names, _ = load_annotations(ann, cfg.data.format)
    if names:
        return list(names), len(names)
    return None, max((r.label for r in records), default=-1) + 1


def build_model(cfg, num_classes: int | None):
    from kinetix.models import create_model

    kwargs = dict(cfg.model.kwargs)
    if cfg.model.num_frames is not None:
        kwargs["num_frames"] = cfg.model.num_frames
    if num_classes:
        kwargs.setdefault("num_classes", num_classes)
    model = create_model(
        cfg.model.name, pretrained=cfg.model.pretrained, checkpoint=cfg.model.checkpoint, **kwargs
    )
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build(cfg, stage: str = "fit", checkpoint=None):
    """LightningModule and LightningDataModule for ``stage`` (``fit`` or ``test``)."""
    anns = {s: _ann_path(cfg, s) for s in ("train", "val", "test")}
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


def evaluate(cfg, checkpoint, out_dir, *, trainer_kwargs=None, quiet: bool = False) -> dict:
    """Multi-view test of a checkpoint: metrics dict; per-class CSV, confusion PNG, JSON in ``out_dir``."""
    from .run import build_trainer, load_weights

    module, dm = build(cfg, "test", checkpoint=checkpoint)
    load_weights(module, checkpoint)
    module.meta["checkpoint"] = str(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = resolve_data_settings(module.model.pretrained_cfg, cfg.data, cfg.eval)
    dm.setup("test")
    n_views = settings.test_views[0] * settings.test_views[1]
    distinct = _distinct_views(dm.test_set, n_views)
    tracker = BadSampleTracker(cfg.data.max_bad_fraction)
    kwargs = dict(trainer_kwargs or {})
    kwargs["callbacks"] = [tracker, *kwargs.get("callbacks", [])]
    trainer = build_trainer(cfg, out_dir, stage="test", **kwargs)
    trainer.test(module, datamodule=dm, verbose=False)
    res = dict(module.test_results)
    # unreadable videos are skipped, never scored in substitute: 'count' is the scored ones
    res.update(skipped=tracker.counts()["test"], skipped_videos=tracker.paths(trainer, "test"))
    meter = module.test_meter
    res.update(
        views=list(settings.test_views),
        distinct_views=distinct,
        aggregate=cfg.eval.aggregate,
        reverse_frames=cfg.eval.reverse_frames,
        checkpoint=str(checkpoint),
        report_dir=str(out_dir),
    )
    if trainer.is_global_zero:
        meter.write_per_class_csv(out_dir / "per_class.csv", module.class_names)
        meter.plot_confusion(
            out_dir / "confusion.png",
            module.class_names,
            f"{cfg.model.name}{' (time-reversed)' if cfg.eval.reverse_frames else ''}",
        )
        (out_dir / "metrics.json").write_text(json.dumps(res, indent=2) + "\n")
    res["meter"] = meter
    return res


def _distinct_views(dataset, n_views: int) -> int:
    """Distinct views of the first test sample (warns when some are duplicates)."""
    from .multiview import check_views

    if n_views == 1 or len(dataset) == 0:
        return 1
    item = next((it for it in (dataset[i] for i in range(min(len(dataset), 8))) if "video" in it), None)
    if item is None:  # no readable video among the first ones: the test run will report them
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


def load_clip_views(path, settings) -> torch.Tensor:
    """All test views of one video file: float ``(V, C, T, H, W)``, ``V = clips * crops`` spread over
    the whole video (segment centres / dense windows from :func:`kinetix.data.sampling.multiview_indices`)."""
    from kinetix.data.io import open_video
    from kinetix.data.sampling import multiview_indices
    from kinetix.data.transforms import test_transform

    clips, crops = settings.test_views
    resize = settings.test_resize or settings.input_size * 256 // 224
    transform = test_transform(
        settings.input_size,
        settings.mean,
        settings.std,
        settings.channel_order,
        settings.value_range,
        resize=resize,
        crops=crops,
    )
    with open_video(path, short_side=resize) as reader:
        idx = multiview_indices(
            reader.num_frames, settings.num_frames, clips, settings.sampling, settings.frame_interval
        )  # (clips, T)
        frames = reader.get_frames(idx.reshape(-1))  # (clips * T, H, W, 3)
    frames = frames.view(clips, settings.num_frames, *frames.shape[1:])
    views = [transform(frames[c])[0] for c in range(clips)]  # each (C, T, H, W) or (crops, C, T, H, W)
    video = torch.stack(views)
    return video.flatten(0, 1) if video.dim() == 6 else video  # (V, C, T, H, W)


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
    """Top-k classes of each video file (multi-view over the whole video). A video that cannot be
    read gets ``{"video", "error"}`` instead (the others are still predicted); scores that are not
    finite are a :class:`CheckpointError` naming ``source`` (the checkpoint)."""
    from .multiview import predict_views

    model.eval()
    k = model.pretrained_cfg.num_classes
    names = class_names if class_names and len(class_names) == k else [str(i) for i in range(k)]
    out = []
    for path in videos:
        try:
            views = load_clip_views(path, settings)
        except KinetixError as e:
            out.append({"video": str(path), "error": str(e)})
            continue
        scores = predict_views(model, views[None], aggregate, reverse_frames)[0]
        if not bool(torch.isfinite(scores).all()):
            raise CheckpointError(
                f"{source or 'the model'}: gives non-finite scores (NaN/inf) on {path}; its weights "
                "are broken or overflow at this precision. Use another checkpoint"
            )
        probs = torch.softmax(scores, -1)
        p, i = probs.topk(min(topk, k))
        out.append(
            {
                "video": str(path),
                "views": int(views.shape[0]),
                "top": [{"label": int(j), "name": names[j], "prob": float(q)} for q, j in zip(p, i)],
            }
        )
    return out
