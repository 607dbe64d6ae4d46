"""EVAD on the synthetic AVA-format dataset: train keep 1.0 and keep 0.7 with the same seed through
the engine (``configs/evad_synthetic.yaml``), evaluate frame-mAP@0.5 on the val split, print both
and their difference.

Targets (issue #6): a clearly non-trivial frame-mAP, and keep 0.7 within 1.0 mAP of keep 1.0.
Runs on one CPU thread (``--threads``) so that the figures do not depend on the machine's load much.
Measured with the config's keep-rate warm-up (8 epochs, ~30-36 min a run): keep 1.0 24.7 / 24.1 / 22.9,
keep 0.7 29.9 / 25.1 / 23.4 (seeds 0 / 1 / 2, ``--set seed=N``) at 0.80x the GMACs. Without the warm-up
(``--set schedule.keep_rate_start_epochs=0 schedule.keep_rate_shrink_epochs=0``) keep 0.7 scores 10.7.

    python benchmarks/evad_synthetic.py                       # the config's videos and epochs
    python benchmarks/evad_synthetic.py --epochs 2 --num-videos 60
    python benchmarks/evad_synthetic.py --finetune 2    # + both keep rates fine-tuned 2 epochs from keep 1.0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kinetix.config import load_config
from kinetix.engine import run
from kinetix.utils.flops import count_flops

CONFIG = "configs/evad_synthetic.yaml"
NUM_VIDEOS = 400  # the dataset size the config's figures were measured with
VIDEO_SIZE = (96, 128)  # kinetix data synth --kind detection writes 96 x 128 videos; input_size 96 keeps them


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--num-videos",
        type=int,
        default=NUM_VIDEOS,
        help=f"synthetic videos to generate (default {NUM_VIDEOS})",
    )
    ap.add_argument("--data", type=Path, default=None, help="default: data/synth_det<num-videos>")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("runs/evad_synthetic_bench"),
        help="run folder (default: %(default)s)",
    )
    ap.add_argument(
        "--keep", type=float, nargs="+", default=[1.0, 0.7], help="keep rates to train (default: 1.0 0.7)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on a shared machine)"
    )
    ap.add_argument(
        "--set", nargs="*", default=[], help="extra config overrides section.key=value, e.g. seed=1"
    )
    ap.add_argument(
        "--finetune",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="then fine-tune every keep rate from the keep-1.0 model for EPOCHS epochs and compare again",
    )
    ap.add_argument(
        "--finetune-lr", type=float, default=3e-4, help="learning rate of --finetune (default 3e-4)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = args.data or Path(f"data/synth_det{args.num_videos}")
    if not (data / "annotations" / "train.csv").exists():
        from kinetix.data.synthetic import generate

        generate("detection", data, num_videos=args.num_videos)

    def train_eval(name: str, keep: float, extra: list[str]) -> dict:
        overrides = [f"data.root={data}", f"train.output_dir={args.out}", f"train.name={name}",
                     f"model.kwargs.keep_rate={keep}", "train.progress_bar=false", *args.set, *extra]  # fmt: skip
        cfg = load_config(CONFIG, overrides)
        t0 = time.time()
        fit = run.fit(cfg)
        train_s = time.time() - t0
        res = run.test(cfg, fit["checkpoint"], args.out / f"eval-{name}")
        model = fit["module"].model.eval()
        gmacs = count_flops(model, torch.zeros(1, 3, model.num_frames, *VIDEO_SIZE)).gmacs
        print(
            f"{name}: frame-mAP@0.5 {res['mAP']:.1f}, {gmacs:.3f} GMACs  (train {train_s / 60:.1f} min)",
            flush=True,
        )
        return {"mAP": res["mAP"], "per_class": res["per_class"], "gmacs": gmacs, "train_s": round(train_s),
                "checkpoint": fit["checkpoint"]}  # fmt: skip

    def compare(results: dict, title: str) -> None:
        print(json.dumps(results, indent=2, default=str))
        if 1.0 in results and 0.7 in results:
            d = results[0.7]["mAP"] - results[1.0]["mAP"]
            r = results[0.7]["gmacs"] / results[1.0]["gmacs"]
            print(f"{title}: keep 1.0 {results[1.0]['mAP']:.1f}, keep 0.7 {results[0.7]['mAP']:.1f} frame-mAP@0.5; "
                  f"keep 0.7 - keep 1.0: {d:+.1f} mAP (target: >= -1.0) at {r:.2f}x the GMACs")  # fmt: skip

    epochs = [f"train.epochs={args.epochs}", f"train.val_every_n_epochs={args.epochs}"] if args.epochs else []
    results = {keep: train_eval(f"keep{keep}", keep, epochs) for keep in args.keep}
    compare(results, "from scratch")
    if args.finetune and 1.0 in results:  # same extra budget for every keep rate, from the keep-1.0 model
        ft = [f"model.checkpoint={results[1.0]['checkpoint']}", f"train.epochs={args.finetune}",
              f"train.val_every_n_epochs={args.finetune}", "schedule.warmup_epochs=0", f"optim.lr={args.finetune_lr}"]  # fmt: skip
        compare(
            {keep: train_eval(f"ft-keep{keep}", keep, ft) for keep in args.keep}, "fine-tuned from keep 1.0"
        )


if __name__ == "__main__":
    main()
