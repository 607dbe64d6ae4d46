"""The embedded demo (``kinetix demo`` / ``make demo``): does a model use temporal order?

1. Generate the synthetic time-reversal dataset (:func:`kinetix.data.synthetic.generate_temporal`):
   classes come in pairs whose videos are exact time reverses of each other (moving left / right,
   rotating clockwise / counter-clockwise, growing / shrinking, appearing / disappearing) plus
   appearance-only classes.
2. Train small TSN, TSM (and GSM, TimeSformer in the full demo) on CPU with the normal
   :func:`kinetix.engine.run.fit` path.
3. Evaluate each on normal and on time-reversed clips; report accuracy overall and on the
   reversed-pair classes.

Expected (Wang et al. 2016 vs Lin et al. 2019; GSM's reversal probe, Sudhakaran et al. 2020): TSN
averages per-frame scores, so it cannot tell a video from its reverse and sits near 50% on the pair
classes; temporal models (TSM, GSM, TimeSformer) get them right, and collapse on reversed clips.

4. Explain (``explainer``, :func:`kinetix.explain.demo.explain_demo` from ``kinetix demo``): each model's default map (Grad-CAM for the CNNs) on validation
   clips of the pair classes; the share of the map's mass inside the moving shape's mask (the
   synthetic generator knows it) against the share of a uniform map (the mask's area), and
   pictures of one clip per pair class with every model's map.

Writes ``DIR/report.md``, ``DIR/report.html`` (one self-contained page: inline CSS, pictures and
overlay videos linked by relative paths), ``DIR/report.json``, ``DIR/accuracy.png``,
``DIR/curves.png``, ``DIR/explain/*.png|mp4``, the data in ``DIR/data`` and every run (checkpoints,
confusion matrices) in ``DIR/runs``.
"""

from __future__ import annotations

import csv
import html
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

import kinetix
from kinetix.config import config_from_dict
from kinetix.data.synthetic import generate_temporal
from kinetix.errors import ConfigError
from kinetix.utils.state_dict import atomic_path, atomic_paths

from .run import fit, test

MARKER = ".kinetix-demo"
# Three time-reversed pairs whose direction a small network learns within the CPU budget, plus an
# appearance-only class (solvable from one frame). `kinetix data synth` writes all the classes.
DEMO_CLASSES = (
    "growing",
    "shrinking",
    "appearing",
    "disappearing",
    "brightening",
    "darkening",
    "static circle",
)
TEMPORAL = {"test_tsm", "test_gsm", "test_timesformer"}


@dataclass(frozen=True)
class DemoPreset:
    num_videos: int
    size: int  # frame size of the synthetic videos = model input size
    epochs: int
    models: tuple[str, ...]
    batch_size: int = 16
    fps: float = 8.0
    seconds: float = 2.0
    num_frames: int = 8
    optim: dict = field(
        default_factory=lambda: {
            "cnn": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05},
            "vit": {"name": "adamw", "lr": 0.002, "weight_decay": 0.05},
        }
    )
    num_workers: int = 0  # decoded videos are cached in the main process (data.cache_decoded)
    classes: tuple[str, ...] = DEMO_CLASSES
    model_kwargs: dict = field(default_factory=dict)  # extra entry-point kwargs of the CNNs


# 40 epochs: the direction of the pairs is learned late (a phase change after ~25 epochs), the
# appearance early. Decoded videos are cached in memory, so epochs after the first cost only compute.
# shift_div 4: at width 8 the default 1/8 would move a single channel each way in the first stage.
# The tiny TimeSformer is left out: it starts order-invariant (temporal_fc = 0, time embedding = 0)
# and in this budget stayed at chance on direction (50%) — it needs a longer schedule than 10 min.
PRESETS = {
    "full": DemoPreset(
        num_videos=1400,
        size=32,
        epochs=40,
        models=("test_tsn", "test_tsm", "test_gsm"),
        model_kwargs={"shift_div": 4},
    ),
    "quick": DemoPreset(
        num_videos=1000, size=32, epochs=40, models=("test_tsn", "test_tsm"), model_kwargs={"shift_div": 4}
    ),
    "smoke": DemoPreset(
        num_videos=40,
        size=16,
        epochs=1,
        models=("test_tsn", "test_tsm"),
        batch_size=4,
        seconds=1.0,
        num_frames=4,
    ),
}


def demo_config(preset: DemoPreset, model: str, data_dir: Path, runs_dir: Path, seed: int, progress: bool):
    """The complete config the demo trains ``model`` with (also written beside each run)."""

    vit = "timesformer" in model or "vivit" in model
    model_kwargs = {"img_size": preset.size} if vit else {"dropout": 0.0, **preset.model_kwargs}
    if "tsm" not in model:  # only TSM has a shift to configure
        model_kwargs.pop("shift_div", None)
    return config_from_dict(
        {
            "task": "classification",
            "seed": seed,
            "model": {"name": model, "num_frames": preset.num_frames, "kwargs": model_kwargs},
            "data": {
                "train_ann": str(data_dir / "train.txt"),
                "val_ann": str(data_dir / "val.txt"),
                "test_ann": str(data_dir / "val.txt"),
                "batch_size": preset.batch_size,
                "num_workers": preset.num_workers,
                "input_size": preset.size,
                "test_resize": preset.size,
                "cache_decoded": True,
                "flip": False,  # direction classes (left/right motion) would be swapped by a flip
            },
            "optim": dict(preset.optim["vit" if vit else "cnn"]),
            "schedule": {"name": "cosine", "warmup_epochs": 0.3, "warmup_start_factor": 0.1},
            "train": {
                "epochs": preset.epochs,
                "output_dir": str(runs_dir),
                "name": model,
                "progress_bar": progress,
                "log_every_n_steps": 5,
                "accelerator": "cpu",
                "devices": 1,
            },
            "eval": {"views": [1, 1], "aggregate": "logits"},
        },
        source=f"demo:{model}",
    )


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(
            f"{out} exists and is not a kinetix demo folder; refusing to write into it. "
            "Pass --out with a new or empty folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `kinetix demo`; its contents are replaced on the next run\n")
    shutil.rmtree(out / "runs", ignore_errors=True)  # our own previous runs


def _val_curve(run_dir: Path) -> list[tuple[int, float]]:
    files = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    if not files:
        return []
    with open(files[-1]) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/top1")]
    return [(int(r["epoch"]) + 1, float(r["val/top1"])) for r in rows]


def run_demo(
    out_dir: str | Path = "demo_out",
    mode: str = "full",
    seed: int = 0,
    progress: bool = True,
    log=print,
    explainer=None,
) -> dict:
    """Run the demo; returns the report dict (also written to ``out_dir/report.json``).

    ``explainer(out, synth, results) -> pictures`` (``kinetix demo`` passes
    :func:`kinetix.explain.demo.explain_demo`; the engine does not import ``kinetix.explain``) adds
    ``results[model]["explain"]`` and returns the report's picture list."""

    if mode not in PRESETS:
        raise ConfigError(f"demo mode must be one of {', '.join(PRESETS)}, got {mode!r}")
    preset = PRESETS[mode]
    out = Path(out_dir)
    _prepare(out)
    t_start = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    log(
        f"[1/3] generating {preset.num_videos} synthetic videos ({preset.size}px, "
        f"{int(preset.fps * preset.seconds)} frames) in {out / 'data'}"
    )
    t0 = time.time()
    synth = generate_temporal(
        out / "data",
        num_videos=preset.num_videos,
        size=preset.size,
        fps=preset.fps,
        seconds=preset.seconds,
        seed=seed,
        classes=list(preset.classes),
    )
    t_data = time.time() - t0
    pairs = [int(c) for p in synth["reversed_pairs"] for c in p]
    appearance = synth["appearance_only"]
    results: dict[str, dict] = {}
    curves: dict[str, list] = {}
    for n, model in enumerate(preset.models, 1):
        log(
            f"[2/3] training {model} ({n}/{len(preset.models)}): {preset.epochs} epochs on "
            f"{synth['counts']['train']} videos"
        )
        cfg = demo_config(preset, model, out / "data", out / "runs", seed, progress)
        t0 = time.time()
        res = fit(cfg)
        t_train = time.time() - t0
        ckpt = res["checkpoint"]
        entry = {
            "train_seconds": round(t_train, 1),
            "checkpoint": str(ckpt),
            "params": sum(p.numel() for p in res["module"].model.parameters()),
        }
        for reverse in (False, True):
            cfg.eval.reverse_frames = reverse
            ev = test(cfg, ckpt)
            meter = ev["meter"]
            entry["reversed" if reverse else "normal"] = {
                "top1": round(ev["top1"], 2),
                "pairs_top1": round(meter.accuracy_on(pairs), 2),
                "pairs_direction": round(meter.direction_accuracy(synth["reversed_pairs"]), 2),
                "appearance_top1": round(meter.accuracy_on(appearance), 2) if appearance else None,
                "confusion_png": str(Path(ev["report_dir"]) / "confusion.png"),
            }
        results[model] = entry
        curves[model] = _val_curve(res["run_dir"])
        log(
            f"      {model}: top-1 {entry['normal']['top1']:.1f}%, reversed pairs "
            f"{entry['normal']['pairs_top1']:.1f}% (time-reversed input: {entry['reversed']['pairs_top1']:.1f}%)"
            f" [{t_train:.0f} s]"
        )
    log("[3/3] explaining the models and writing the report")
    t0 = time.time()
    pictures = explainer(out, synth, results) if explainer is not None else []
    t_explain = time.time() - t0
    report = _report(out, mode, seed, preset, synth, results, t_data, time.time() - t_start)
    report["explain"] = pictures
    report["seconds"]["explain"] = round(t_explain, 1)
    _plots(out, results, curves)
    names = ("report.json", "report.md", "report.html")
    with atomic_paths(*(out / n for n in names)) as (as_json, as_md, as_html):  # together or none
        as_md.write_text(_markdown(report))
        as_html.write_text(_html(report), encoding="utf-8")
        as_json.write_text(json.dumps(report, indent=2) + "\n")
    log("")
    log(summary_table(report))
    return report


def _claim(results: dict) -> dict:
    # TSN's per-frame average cannot tell a clip from its reverse: its direction accuracy within the
    # pairs is at chance (50%) whatever it learns about the pairs' appearance.
    tsn = [r["normal"]["pairs_direction"] for m, r in results.items() if m not in TEMPORAL]
    temporal = {m: r["normal"]["pairs_direction"] for m, r in results.items() if m in TEMPORAL}
    return {
        "tsn_pairs_near_chance": bool(tsn) and all(35.0 <= v <= 65.0 for v in tsn),
        "temporal_models_at_least_90": bool(temporal) and all(v >= 90.0 for v in temporal.values()),
    }


def _report(out, mode, seed, preset, synth, results, t_data, t_total) -> dict:
    return {
        "kinetix": kinetix.__version__,
        "mode": mode,
        "seed": seed,
        "preset": asdict(replace(preset)),
        "dataset": {
            "path": str(out / "data"),
            "classes": synth["classes"],
            "reversed_pairs": synth["reversed_pairs"],
            "appearance_only": synth["appearance_only"],
            "counts": synth["counts"],
        },
        "chance": {"overall": round(100.0 / len(synth["classes"]), 2), "pairs": 50.0},
        "models": results,
        "claim": _claim(results),
        "seconds": {"data": round(t_data, 1), "total": round(t_total, 1)},
        "plots": {"accuracy": "accuracy.png", "curves": "curves.png"},
    }


def summary_table(report: dict) -> str:
    lines = [
        f"{'model':<18} {'top-1':>7} {'pairs':>7} {'direction':>10} {'pairs, reversed input':>22} {'train s':>8}",
        "-" * 77,
    ]
    for m, r in report["models"].items():
        lines.append(
            f"{m:<18} {r['normal']['top1']:>6.1f}% {r['normal']['pairs_top1']:>6.1f}% "
            f"{r['normal']['pairs_direction']:>9.1f}% {r['reversed']['pairs_top1']:>21.1f}% "
            f"{r['train_seconds']:>8.0f}"
        )
    c = report["claim"]
    lines.append("")
    lines.append(
        f"TSN direction on reversed pairs near chance (50%): {'yes' if c['tsn_pairs_near_chance'] else 'NO'};  "
        f"temporal models' direction >= 90%: {'yes' if c['temporal_models_at_least_90'] else 'NO'}  "
        f"(total {report['seconds']['total']:.0f} s)"
    )
    return "\n".join(lines)


def _markdown(report: dict) -> str:
    ds = report["dataset"]
    names = ds["classes"]
    pairs = ", ".join(f"{names[a]} / {names[b]}" for a, b in ds["reversed_pairs"])
    rows = "\n".join(
        f"| {m} | {r['params'] / 1e3:.0f} k | {r['normal']['top1']:.1f}% | {r['normal']['pairs_top1']:.1f}% | "
        f"{r['normal']['pairs_direction']:.1f}% | {r['reversed']['top1']:.1f}% | {r['reversed']['pairs_top1']:.1f}% | "
        f"{r['train_seconds']:.0f} |"
        for m, r in report["models"].items()
    )
    c = report["claim"]
    return f"""# kinetix demo: does the model use temporal order?

Mode `{report["mode"]}`, seed {report["seed"]}, kinetix {report["kinetix"]}, total {report["seconds"]["total"]:.0f} s.

**Data.** {ds["counts"]["videos"]} synthetic H.264 videos ({ds["counts"]["train"]} train / {ds["counts"]["val"]} val),
{len(names)} classes. Time-reversed pairs (each video of one class is the exact reverse of a video of
the other): {pairs}. Appearance-only classes: {", ".join(names[i] for i in ds["appearance_only"]) or "none"}.

**Question.** TSN averages per-frame predictions, so a video and its time reverse look the same to it:
on the pair classes it can only guess the direction (chance = 50%). Temporal models (TSM's shift,
GSM's gated shift, TimeSformer's temporal attention) can tell them apart. Feeding time-reversed clips
(`kinetix test --reverse-frames`) makes a temporal model predict the partner class.

| model | params | top-1 | reversed-pair classes | direction within pairs | top-1, reversed input | pairs, reversed input | train s |
|---|---|---|---|---|---|---|---|
{rows}

Chance: {report["chance"]["overall"]:.0f}% overall, 50% on the pair classes. "Direction within pairs":
of the pair-class clips predicted as one of their pair, the share given the right direction.

- TSN's direction within the reversed pairs near chance (35-65%): **{"yes" if c["tsn_pairs_near_chance"] else "no"}**
- temporal models' direction within the reversed pairs at least 90%: **{"yes" if c["temporal_models_at_least_90"] else "no"}**

![accuracy](accuracy.png)

![validation accuracy per epoch](curves.png)

Confusion matrices: `runs/<model>/checkpoints/.../eval*/confusion.png`. Reproduce one run with
`kinetix train` on the config saved in `runs/<model>/config.yaml`.
{_explain_markdown(report)}"""


def _explain_rows(report: dict) -> list[tuple[str, dict]]:
    return [(m, r["explain"]) for m, r in report["models"].items() if r.get("explain")]


def _explain_markdown(report: dict) -> str:
    rows = _explain_rows(report)
    if not rows:
        return ""
    table = "\n".join(
        f"| {m} | {e['method']} | {e['clips']} | {e['mask_mass_share']:.1f}% | {e['uniform_share']:.1f}% |"
        for m, e in rows
    )
    pics = "\n\n".join(
        f"**{p['class']}** (`{p['video']}`): [overlay video]({p['mp4']})\n\n![{p['class']}]({p['png']})"
        for p in report.get("explain", [])
    )
    return f"""
## What the models look at

`kinetix explain` on validation clips of the pair classes (the predicted class; Grad-CAM for the
CNNs). The synthetic generator knows where the moving shape is, so the share of each heat map's mass
inside the shape's mask is measured, beside the share a uniform map would get (the mask's area).

| model | method | clips | heat-map mass inside the shape | uniform map |
|---|---|---|---|---|
{table}

{pics}
"""


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img,video{max-width:100%}
.pic{margin:1.5em 0}.note{color:#555;font-size:90%}"""


def _html(report: dict) -> str:
    """``report.html``: the report as one page (inline CSS; pictures and videos by relative path)."""
    e = html.escape
    ds, c = report["dataset"], report["claim"]
    names = ds["classes"]
    head = ("model", "params", "top-1", "reversed-pair classes", "direction within pairs",
            "top-1, reversed input", "pairs, reversed input", "train s")  # fmt: skip
    rows = "".join(
        f"<tr><td>{e(m)}</td><td>{r['params'] / 1e3:.0f} k</td><td>{r['normal']['top1']:.1f}%</td>"
        f"<td>{r['normal']['pairs_top1']:.1f}%</td><td>{r['normal']['pairs_direction']:.1f}%</td>"
        f"<td>{r['reversed']['top1']:.1f}%</td><td>{r['reversed']['pairs_top1']:.1f}%</td>"
        f"<td>{r['train_seconds']:.0f}</td></tr>"
        for m, r in report["models"].items()
    )
    pairs = ", ".join(f"{names[a]} / {names[b]}" for a, b in ds["reversed_pairs"])
    yes = {True: "yes", False: "no"}
    parts = [
        "<h1>kinetix demo: does the model use temporal order?</h1>",
        f"<p class=note>Mode <code>{e(report['mode'])}</code>, seed {report['seed']}, kinetix "
        f"{e(report['kinetix'])}, total {report['seconds']['total']:.0f} s.</p>",
        f"<p>{ds['counts']['videos']} synthetic H.264 videos ({ds['counts']['train']} train / "
        f"{ds['counts']['val']} val), {len(names)} classes. Time-reversed pairs: {e(pairs)}.</p>",
        "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{rows}</table>",
        f"<p>Chance: {report['chance']['overall']:.0f}% overall, 50% on the pair classes.</p>",
        f"<ul><li>TSN's direction within the reversed pairs near chance (35-65%): "
        f"<b>{yes[c['tsn_pairs_near_chance']]}</b></li><li>temporal models' direction within the "
        f"reversed pairs at least 90%: <b>{yes[c['temporal_models_at_least_90']]}</b></li></ul>",
        f'<img src="{e(report["plots"]["accuracy"])}" alt="accuracy">',
        f'<img src="{e(report["plots"]["curves"])}" alt="validation accuracy per epoch">',
    ]
    explained = _explain_rows(report)
    if explained:
        table = "".join(
            f"<tr><td>{e(m)}</td><td>{e(x['method'])}</td><td>{x['clips']}</td>"
            f"<td>{x['mask_mass_share']:.1f}%</td><td>{x['uniform_share']:.1f}%</td></tr>"
            for m, x in explained
        )
        parts += [
            "<h2>What the models look at</h2>",
            "<p>Each model's map (Grad-CAM for the CNNs, for the predicted class) on validation clips "
            "of the pair classes, and the share of the map's mass inside the moving shape's mask "
            "(known to the synthetic generator), beside a uniform map's share (the mask's area).</p>",
            "<table><tr><th>model</th><th>method</th><th>clips</th><th>heat-map mass inside the shape"
            f"</th><th>uniform map</th></tr>{table}</table>",
        ]
        for p in report.get("explain", []):
            parts.append(
                f"<div class=pic><h3>{e(p['class'])} <span class=note>({e(p['video'])})</span></h3>"
                f'<img src="{e(p["png"])}" alt="{e(p["class"])}">'
                f'<video src="{e(p["mp4"])}" controls loop muted autoplay playsinline></video></div>'
            )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>kinetix demo report</title>"
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _plots(out: Path, results: dict, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    x = range(len(models))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(models), 3.6))
    w = 0.27
    series = [
        ("top-1 (all classes)", "normal", "top1"),
        ("reversed-pair classes", "normal", "pairs_top1"),
        ("pairs, time-reversed input", "reversed", "pairs_top1"),
    ]
    for k, (label, split, key) in enumerate(series):
        ax.bar([i + (k - 1) * w for i in x], [results[m][split][key] for m in models], w, label=label)
    ax.axhline(50, color="grey", ls="--", lw=1)
    ax.text(len(models) - 0.5, 51, "chance on pairs", ha="right", fontsize=8, color="grey")
    ax.set_xticks(list(x), models)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(out / "accuracy.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for m, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
