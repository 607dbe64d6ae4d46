"""``kinetix explain VIDEO --checkpoint CKPT --out DIR [--method M] [--class NAME]``: what the model
looks at in each sampled frame, as an overlay video and a PNG grid."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="show where a model looks: Grad-CAM, attention maps, rollout, SIFA offsets, EVAD tokens",
        description=textwrap.fill(
            "Explain a trained model's prediction on one video: the frames of its test view (one clip, "
            "centre crop) with a heat map per frame, written as DIR/<video>_<method>.mp4 (input | "
            "overlays, label and score drawn) and DIR/<video>_<method>.png (rows: maps, columns: "
            "frames). Methods: gradcam (TSN, TSM, GSM, SIFA-Net on ResNet, BN-Inception, Inception-v3 or "
            "MobileNetV2; Swin and SIFA-Transformer: the map the global pool reads), attention and "
            "rollout (TimeSformer, ViViT, VideoMAE; models without a CLS token get the mean attention), "
            "offsets (SIFA's learned offsets), tokens (EVAD's kept tokens). The default is the model's "
            "first method; a method that does not apply is refused with the reason.",
            88,
        ),
        epilog="examples:\n"
        "  kinetix explain clip.mp4 --checkpoint demo_out/runs/test_tsm/checkpoints/best --out explain_out\n"
        "  kinetix explain clip.mp4 --checkpoint runs/timesformer/checkpoints/best --method rollout --out maps\n"
        "  kinetix explain clip.mp4 --model test_tsm --checkpoint tsm.safetensors --class growing --out maps\n"
        "  kinetix explain clip.mp4 --model gsm_inceptionv3 --checkpoint gsm_incv3_ssv1.pth --out maps",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", type=Path, metavar="VIDEO", help="video file (or frame folder)")
    p.add_argument(
        "--checkpoint", metavar="CKPT", help="kinetix checkpoint folder / run folder / weights file"
    )
    p.add_argument("--model", metavar="NAME", help="registered model name (for a bare weights file)")
    p.add_argument(
        "--out", type=Path, default=Path("explain_out"), help="output folder (default: explain_out)"
    )
    p.add_argument("--method", choices=("gradcam", "attention", "rollout", "offsets", "tokens"),
                   help="what to show (default: the model family's first method)")  # fmt: skip
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="class to explain (default: the predicted class); Grad-CAM maps depend on it, "
                   "attention maps do not (only the score shown changes)")  # fmt: skip
    p.set_defaults(func=run)


def run(args) -> int:
    from kinetix.explain import explain

    expl, files = explain(args.video, args.checkpoint, args.out, args.method, args.class_name, args.model)
    what = f" for '{expl.target_name}' (p={expl.score:.2f})" if expl.score is not None else ""
    print(f"{args.video}: {expl.method}{what}; {expl.note}")
    print(f"  overlay -> {files['mp4']}\n  grid    -> {files['png']}")
    return 0
