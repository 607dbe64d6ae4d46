"""Training entry run as a subprocess by the DDP and SIGKILL-resume tests.

usage: python train_script.py CONFIG OUT_DIR [--resume CKPT] [--sleep SECONDS] [--set k=v ...]

Registers ``engine_tiny``, trains with :func:`kinetix.engine.run.fit` (Lightning re-launches this
script for each DDP rank), and writes ``OUT_DIR/rank<R>.json``: a SHA-256 of the final weights and
the sample indices this rank trained on, and the unreadable samples this rank's tracker counts
(per split, with their files).
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lightning.pytorch as pl
import tiny  # noqa: F401

from kinetix.config import load_config
from kinetix.engine import run
from kinetix.engine.badsamples import BadSampleTracker


class Record(pl.Callback):
    def __init__(self, sleep: float):
        self.sleep, self.seen = sleep, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen += [int(i) for i in batch["index"]]
        time.sleep(self.sleep)  # slows the run down so that the test can kill it mid-epoch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("out")
    p.add_argument("--resume")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--set", nargs="*", default=[])
    a = p.parse_args()
    cfg = load_config(a.config, a.set)
    rec = Record(a.sleep)
    res = run.fit(cfg, resume=a.resume, callbacks=[rec])
    trainer, module = res["trainer"], res["module"]
    tracker = next(c for c in trainer.callbacks if isinstance(c, BadSampleTracker))
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"rank{trainer.global_rank}.json").write_text(
        json.dumps(
            {
                "hash": h.hexdigest(),
                "seen": rec.seen,
                "world_size": trainer.world_size,
                "step": trainer.global_step,
                "bad_samples": tracker.counts(),
                "bad_files": {s: tracker.paths(trainer, s) for s in ("train", "val")},
            }
        )
    )


if __name__ == "__main__":
    main()
