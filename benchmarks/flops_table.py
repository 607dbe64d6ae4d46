"""GMACs per view and parameters of every registered model (meta device: no compute), with the
papers' numbers beside where they are known.

Usage: ``python benchmarks/flops_table.py [PATTERN] [--frames T] [--size S] [--include-test]``
"""

from __future__ import annotations

import argparse
import time

from kinetix.models import get_pretrained_cfg, list_models
from kinetix.models._complexity import model_complexity

# (GMACs, M params) reported by papers / official zoos for the default views (see reference docs)
REFERENCE = {
    "tsn_r50": (32.9, 24.33),  # mmaction2 / TSM paper (8x224, 400 classes)
    "tsm_r50": (32.9, 24.33),
    "gsm_bninception": (16.5, 10.5),  # GSM paper, 8 frames, SSv1 (not re-verified)
    "gsm_inceptionv3": (26.9, 22.2),  # GSM paper, 8 frames, 229 px, SSv1 (not re-verified)
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "pattern", nargs="?", default="*", help="glob of model names, e.g. 'vivit*' (default: all)"
    )
    p.add_argument("--frames", type=int, default=None, help="override every model's frames")
    p.add_argument("--size", type=int, default=None, help="override every model's input size")
    p.add_argument("--include-test", action="store_true", help="also list the tiny test_* models")
    a = p.parse_args(argv)
    print(
        f"{'model':<28s}{'frames':>7s}{'size':>6s}{'GMACs':>10s}{'M params':>10s}   reference (GMACs, M params)"
    )
    for name in list_models(a.pattern, include_test=a.include_test):
        cfg = get_pretrained_cfg(name)
        t0 = time.perf_counter()
        try:
            r = model_complexity(name, num_frames=a.frames, input_size=a.size)
        except Exception as e:  # a model that cannot run at the requested size/frames
            print(f"{name:<28s}  error: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
            continue
        ref = REFERENCE.get(name) if a.frames is None and a.size is None else None
        ref_s = (
            f"{ref[0]:.1f}, {ref[1]:.2f}  ({r.gmacs / ref[0] - 1:+.1%}, {r.mparams / ref[1] - 1:+.1%})"
            if ref
            else ""
        )
        t, s = a.frames or cfg.num_frames, a.size or cfg.input_size
        print(f"{name:<28s}{t:>7d}{s:>6d}{r.gmacs:>10.2f}{r.mparams:>10.2f}   {ref_s}"
              f"{'' if time.perf_counter() - t0 < 30 else '  (slow to count)'}")  # fmt: skip


if __name__ == "__main__":
    main()
