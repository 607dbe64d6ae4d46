"""The explanation step of ``kinetix demo`` (:func:`kinetix.engine.demo.run_demo` calls it).

Each trained model's default map (:func:`~.api.methods_for`; Grad-CAM for the demo's CNNs, for the
predicted class) on ``MASS_CLIPS_PER_CLASS`` validation clips of every pair class; the share of the
map's mass inside the moving shape's mask (:func:`kinetix.data.synthetic.load_temporal_mask`) against
the share of a uniform map (the mask's area); and pictures (PNG grid + overlay mp4) of
``PICTURES_PER_CLASS`` clips per pair class with every model's map, in ``out/explain``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kinetix.data.synthetic import load_temporal_mask

from .api import (
    explain_video,
    load_explainable,
    mask_for_view,
    mask_mass_share,
    methods_for,
    write_comparison,
)

PICTURES_PER_CLASS = 1  # validation clips per pair class shown in the report
MASS_CLIPS_PER_CLASS = 10  # validation clips per pair class in the mask-mass measurement


def explain_demo(out: Path, synth: dict, results: dict) -> list[dict]:
    """Adds ``results[model]["explain"]`` (method, note, clips, ``mask_mass_share`` and
    ``uniform_share`` in %) and returns ``[{"class", "video", "png", "mp4"}]`` (paths relative to
    ``out``)."""
    data = out / "data"
    names = synth["classes"]
    val = [ln.split() for ln in (data / "val.txt").read_text().splitlines() if ln.strip()]
    label_of = {data / v: names[int(lab)] for v, lab in val}
    clips = {c: [data / v for v, lab in val if int(lab) == c] for p in synth["reversed_pairs"] for c in p}
    shown: dict[Path, dict] = {}
    for model_name, entry in results.items():
        model, class_names, settings = load_explainable(entry["checkpoint"])
        method = methods_for(model)[0]
        shares, areas, note = [], [], ""
        for videos in clips.values():
            for k, video in enumerate(videos[:MASS_CLIPS_PER_CLASS]):
                e = explain_video(model, video, settings, method, class_names=class_names)
                mask = mask_for_view(load_temporal_mask(data, video), e.frame_indices, settings)
                shares.append(mask_mass_share(next(iter(e.maps.values())), mask))
                areas.append(float(mask.mean()))
                note = e.note
                if k < PICTURES_PER_CLASS:
                    shown.setdefault(video, {})[model_name] = e
        entry["explain"] = {
            "method": method,
            "note": note,
            "clips": len(shares),
            "mask_mass_share": round(100 * float(np.nanmean(shares)), 1) if shares else None,
            "uniform_share": round(100 * float(np.mean(areas)), 1) if areas else None,
        }
    pictures = []
    for video, expls in shown.items():
        label = label_of[video]
        stem = f"{label.replace(' ', '_')}_{video.stem}"
        files = write_comparison(expls, out / "explain", stem, f"{video.name} (class '{label}')")
        pictures.append({"class": label, "video": str(video.relative_to(out)),
                         **{k: str(Path(f).relative_to(out)) for k, f in files.items()}})  # fmt: skip
    return pictures
