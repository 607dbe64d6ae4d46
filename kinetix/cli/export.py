"""``kinetix export (MODEL | --checkpoint CKPT) --out model.onnx [--frames T] [--size S] [--dynamic-batch]``."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (checked in onnxruntime)",
        description=textwrap.fill(
            "Export a registered model or a trained kinetix checkpoint to ONNX with torch.onnx's dynamo "
            "exporter. The exported file is run in onnxruntime on the same input as PyTorch and only "
            "written when the logits agree (max |diff| within --rtol of the logit scale). Online "
            "(causal) TSM/GSM models are exported as a step model: one frame and the shift caches in, "
            "the frame's logits and the new caches out. Needs the deploy extra: "
            "pip install 'kinetix[deploy]'.",
            88,
        ),
        epilog="examples:\n"
        "  kinetix export test_tsm --out tsm.onnx\n"
        "  kinetix export --checkpoint runs/demo_tsm/checkpoints/best --out tsm.onnx --dynamic-batch\n"
        "  kinetix export timesformer_base --frames 8 --size 224 --out timesformer.onnx\n"
        "  kinetix export tsm_r50_online --out tsm_online_step.onnx    # step model for streaming",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="registered model name (see kinetix models)")
    p.add_argument(
        "--checkpoint", metavar="CKPT", help="kinetix checkpoint folder / run folder / weights file"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output .onnx file")
    p.add_argument("--frames", type=int, metavar="T", help="frames per clip (default: the model's)")
    p.add_argument("--size", type=int, metavar="S", help="input height and width (default: the model's)")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="batch size of the graph (default: 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument(
        "--clip", action="store_true", help="export an online model as a clip model instead of a step model"
    )
    p.add_argument(
        "--rtol", type=float, default=1e-4, help="allowed max |diff| / logit scale (default: 1e-4)"
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _load(args):
    from kinetix.engine.task import model_from_checkpoint
    from kinetix.errors import ConfigError
    from kinetix.models import create_model

    if args.checkpoint is None and args.model is None:
        raise ConfigError("pass a MODEL name or --checkpoint CKPT")
    if args.checkpoint is None:
        return create_model(args.model, **({"num_frames": args.frames} if args.frames else {}))
    return model_from_checkpoint(args.checkpoint, args.model, num_frames=args.frames)[0]


def _is_online(model) -> bool:
    from kinetix.layers.temporal import GateShift, TemporalShift

    layers = [m for m in model.modules() if isinstance(m, TemporalShift | GateShift)]
    return bool(layers) and all(m.causal for m in layers)


def run(args) -> int:
    from kinetix.deploy import export_onnx, export_step_onnx
    from kinetix.errors import ConfigError

    from ._common import check_output_path

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out must end in .onnx, got {out}")
    check_output_path(out, "--out")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    for flag in ("frames", "size", "batch"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {v}")
    model = _load(args)
    if _is_online(model) and not args.clip:
        if args.dynamic_batch:
            raise ConfigError("a step model has a fixed batch (--batch); drop --dynamic-batch or pass --clip")
        res = export_step_onnx(model, out, input_size=args.size, batch_size=args.batch, rtol=args.rtol)
    else:
        res = export_onnx(
            model,
            out,
            num_frames=args.frames,
            input_size=args.size,
            batch_size=args.batch,
            dynamic_batch=args.dynamic_batch,
            rtol=args.rtol,
        )
    if args.json:
        keys = ("input_shape", "max_abs_diff", "logit_scale", "rel_diff", "seconds", "dynamic_batch", "step")
        print(json.dumps({"path": str(res.path), **{k: getattr(res, k) for k in keys}}, indent=2))
    else:
        print(res.summary())
    return 0
