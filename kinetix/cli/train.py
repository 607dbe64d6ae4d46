"""``kinetix train CONFIG [--set section.key=value ...] [--resume CKPT_OR_RUN]``."""

from __future__ import annotations

import textwrap

from ._common import add_set_argument, load


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
        "  kinetix train configs/tsm_r50_k400.yaml --resume runs/tsm_r50_k400  # latest checkpoint",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config file")
    add_set_argument(p)
    p.add_argument(
        "--resume",
        metavar="CKPT_OR_RUN",
        help="continue from a checkpoint folder (RUN/checkpoints/step-N) or a run folder (RUN: its latest "
        "checkpoint); "
        "mid-epoch checkpoints resume exactly where they stopped",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from kinetix.engine.run import fit

    cfg = load(args)
    out = fit(cfg, resume=args.resume)
    if out["trainer"].is_global_zero:
        m = out["metrics"]
        print(f"run folder:  {out['run_dir']}")
        print(f"checkpoint:  {out['checkpoint']}")
        if out["best"] is not None:
            print(f"best:        {out['best']}")
        if "val/top1" in m:
            print(
                f"val top-1:   {m['val/top1']:.2f}%   mean-class: {m.get('val/mean_class_acc', float('nan')):.2f}%"
            )
    return 0
