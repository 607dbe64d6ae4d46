"""``kinetix train CONFIG [--set section.key=value ...] [--resume CKPT_OR_RUN]``."""

from __future__ import annotations

import textwrap

from kinetix.config import apply_overrides, load_config, parse_override
from kinetix.errors import ConfigError

from ._common import add_set_argument, load, names_config


def resume_config(args):
    """The config a resumed run continues with: the one it was trained with (from its checkpoint)
    plus this command's ``--set`` overrides. A config file passed as well must agree with it on
    every key the overrides do not set; otherwise every difference is listed and nothing runs."""
    from kinetix.engine.run import config_differences, saved_config

    saved = saved_config(args.resume)
    if args.config is not None:
        given = load_config(args.config, args.overrides)
        overridden = {parse_override(o)[0] for o in args.overrides}
        diffs = [d for d in config_differences(saved, given) if d.split(":", 1)[0] not in overridden]
        if diffs:
            raise ConfigError(
                f"{args.config}: differs from the config {args.resume} was trained with:\n  "
                + "\n  ".join(diffs)
                + "\nResume without a config file (kinetix train --resume RUN) to continue exactly as it "
                "was trained, change keys explicitly with --set KEY=VALUE, or start a new run"
            )
    return apply_overrides(saved, args.overrides)


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description=_wrap(
            "Train any registered model from a flat YAML config (see configs/). Data settings "
            "(frames, input size, normalisation) come from the model; the resolved config is saved in the "
            "run folder and inside every checkpoint. Multi-GPU / multi-node: set train.devices, "
            "train.num_nodes and train.strategy=ddp (docs/distributed.md)."
        ),
        epilog="examples:\n  kinetix train configs/tsm_r50_k400.yaml --set optim.lr=0.02 train.epochs=50\n"
        "  kinetix train --resume runs/tsm_r50_k400  # its latest checkpoint, with its own config",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "config",
        nargs="?",
        help="YAML config file (with --resume: optional; the run's own config is used, and a "
        "config file that differs from it is refused)",
    )
    add_set_argument(p)
    p.add_argument(
        "--resume",
        metavar="CKPT_OR_RUN",
        help="continue from a checkpoint folder (RUN/checkpoints/step-N) or a run folder (RUN: its latest "
        "checkpoint); "
        "mid-epoch checkpoints resume exactly where they stopped",
    )
    p.set_defaults(func=names_config(run))


def run(args) -> int:
    from kinetix.engine.run import fit

    if args.config is None and args.resume is None:
        raise ConfigError("give a CONFIG file, or --resume RUN to continue a run")
    cfg = resume_config(args) if args.resume is not None else load(args)
    out = fit(cfg, resume=args.resume)
    if out["trainer"].is_global_zero:
        m = out["metrics"]
        print(f"run folder:  {out['run_dir']}")
        print(f"checkpoint:  {out['checkpoint']}")
        if out["best"] is not None:
            print(f"best:        {out['best']}")
        bad = {k: n for k, n in out.get("bad_samples", {}).items() if n}
        if bad:  # unreadable samples were skipped (and replaced in training), never silently
            print("skipped:     " + ", ".join(f"{n} unreadable {k} samples" for k, n in bad.items()))
        if "val/top1" in m:
            print(
                f"val top-1:   {m['val/top1']:.2f}%   mean-class: {m.get('val/mean_class_acc', float('nan')):.2f}%"
            )
    return 0
