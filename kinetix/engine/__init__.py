"""Training and evaluation on Lightning: modules, data modules, optimisers, metrics, multi-view.

>>> from kinetix.config import load_config
>>> from kinetix.engine import fit, test
>>> cfg = load_config("configs/demo_tsm.yaml", ["optim.lr=0.002"])
>>> out = fit(cfg)                      # run folder, checkpoints, metrics
>>> res = test(cfg, out["checkpoint"])  # top-1/top-5, mean-class accuracy, reports
"""

from .datamodule import VideoDataModule, resolve_data_settings
from .module import ClassificationModule, TrainingDivergedError
from .run import fit, predict, test

__all__ = [
    "ClassificationModule",
    "TrainingDivergedError",
    "VideoDataModule",
    "fit",
    "predict",
    "resolve_data_settings",
    "test",
]
