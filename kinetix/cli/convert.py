"""``kinetix convert``: turn an official / mmaction2 / Hugging Face / torchvision / scenic checkpoint
into a kinetix safetensors file that loads strictly into the named model."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a foreign checkpoint to kinetix safetensors",
        description="Convert a checkpoint from an official repository, mmaction2, "
        "Hugging Face, torchvision or scenic (npz) into a kinetix .safetensors file. "
        "The source must provide every tensor of the model (missing and unused ones are reported; "
        "--allow-partial writes a partial result anyway) and the result is verified to load strictly "
        "before it is written. Pickled files "
        "are read with torch.load(weights_only=True): no code is executed.",
        epilog="examples:\n"
        "  kinetix convert --model tsm_r50 \\\n"
        "      --src TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth --out tsm_r50_k400.safetensors\n"
        "  kinetix convert --model timesformer_base --src TimeSformer_divST_8x32_224.pyth --out tsf_k400.safetensors\n"
        "  kinetix convert --model vivit_base_m2 --src vivit_fe_k400.npz --out vivit_m2.safetensors --num-frames 32\n"
        "then: kinetix predict clip.mp4 --model tsm_r50 --checkpoint tsm_r50_k400.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="registered model name, e.g. tsm_r50")
    p.add_argument("--src", required=True, help="source checkpoint (.pth/.pyth/.pt/.bin/.safetensors/.npz)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--num-frames", type=int, default=None, help="frames the model is built for")
    p.add_argument(
        "--num-classes", type=int, default=None, help="classifier size (default: taken from the checkpoint)"
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="write the result even when the source lacks some of the model's tensors (they keep "
        "the model's random initialisation; e.g. a backbone-only checkpoint for a detector)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from kinetix.errors import ConfigError
    from kinetix.models import convert_with_report, create_model

    from ._common import check_output_path

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {out}")
    check_output_path(out, "--out")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give the .safetensors file to write")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    kwargs = {k: v for k, v in (("num_frames", args.num_frames), ("num_classes", args.num_classes)) if v}
    model = create_model(args.model, **kwargs)
    _, report = convert_with_report(model, args.src, out, allow_partial=args.allow_partial)
    n = sum(p.numel() for p in model.state_dict().values())
    whole = "complete" if not report.missing else f"PARTIAL: {len(report.missing)} missing"
    print(
        f"wrote {out} ({report.loaded} of {report.total} tensors from the source, {whole}; "
        f"{n / 1e6:.2f} M values) for {args.model}"
    )
    if report.missing:
        print(f"  {report.describe()}")
    elif report.unused:
        print(f"  note: unused source tensors: {', '.join(report.unused[:8])}"
              + (f", ... ({len(report.unused)} in all)" if len(report.unused) > 8 else ""))  # fmt: skip
    return 0
