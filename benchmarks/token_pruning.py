"""Keyframe token pruning (``keep_rate``, EVAD's KTP) in the ViT recognisers: GMACs and CPU latency.

For each model the unpruned recogniser (keep 1.0, the baseline) and the same weights at keep 0.7 and
0.5 (w_kf = 4, pruning at the 4th, 7th and 10th blocks) run side by side in one process: GMACs from
``kinetix.utils.count_flops`` (the pruning blocks' importance pass included) and the median of
interleaved runs (wall and this process's CPU time; with ``--threads 1`` the CPU time is a clean
measure of work on a shared machine), each with its ratio to keep 1.0.

Models: VideoMAE-B 16×224 (8×14×14 tubelets), ViViT-B Model 1 and TimeSformer-B joint at 8×224.
Cost model: a block's linear layers scale with its tokens N, its attention with N²; the first four
blocks always see every token and the pruning blocks add a second flash pass for the importance.

    python benchmarks/token_pruning.py --threads 1           # three models, 3 timed rounds (~3 min)
    python benchmarks/token_pruning.py --threads 1 --quick   # VideoMAE-B only, 2 rounds
"""

from __future__ import annotations

import argparse

import torch
from temporal_cnn import _median_ms  # interleaved medians of wall and CPU time (same method)

from kinetix.models import create_model
from kinetix.utils.flops import count_flops

MODELS = [("videomae_base", 16), ("vivit_base_m1", 8), ("timesformer_base_joint", 8)]
RATES = (1.0, 0.7, 0.5)


@torch.no_grad()
def bench(name: str, frames: int, size: int, repeats: int, keyframe_weight: float) -> None:
    torch.manual_seed(0)
    base = create_model(name, num_frames=frames, input_size=size).eval()
    models = {"keep 1.0": base}
    for rate in RATES[1:]:
        m = create_model(
            name, num_frames=frames, input_size=size, keep_rate=rate, keyframe_weight=keyframe_weight
        )
        m.load_state_dict(base.state_dict())
        models[f"keep {rate}"] = m.eval()
    x = torch.randn(1, 3, frames, size, size)
    gmacs = {k: count_flops(m, x).gmacs for k, m in models.items()}
    times = _median_ms({k: (lambda m=m: m(x)) for k, m in models.items()}, repeats)
    print(f"\n{name}, 1x3x{frames}x{size}x{size}")
    print(f"  {'':<10}{'GMACs':>8}{'ratio':>7}{'wall ms':>10}{'ratio':>7}{'cpu ms':>10}{'ratio':>7}")
    g0, (w0, c0, _) = gmacs["keep 1.0"], times["keep 1.0"]
    for k in models:
        w, c, _ = times[k]
        print(
            f"  {k:<10}{gmacs[k]:>8.1f}{gmacs[k] / g0:>7.2f}{w:>10.0f}{w / w0:>7.2f}{c:>10.0f}{c / c0:>7.2f}"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="VideoMAE-B only, 2 timed rounds")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, --quick 2)")
    ap.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    ap.add_argument(
        "--keyframe-weight",
        type=float,
        default=4.0,
        help="w_kf, weight of the keyframe/CLS query rows (default 4)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (torch.set_num_threads; default: torch's choice)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, median of {repeats} rounds"
    )
    for name, frames in MODELS[:1] if args.quick else MODELS:
        bench(name, frames, args.size, repeats, args.keyframe_weight)


if __name__ == "__main__":
    main()
