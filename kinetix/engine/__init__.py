"""Training and evaluation on Lightning (layout: ``docs/engine.md``).

>>> from kinetix.config import load_config
>>> from kinetix.engine import fit, test
>>> cfg = load_config("configs/demo_tsm.yaml", ["optim.lr=0.002"])
>>> out = fit(cfg)                      # run folder, checkpoints, metrics
>>> res = test(cfg, out["checkpoint"])  # top-1/top-5, mean-class accuracy, reports
"""

from .datamodule import DataSettings, VideoDataModule, resolve_data_settings
from .module import ClassificationModule
from .run import fit, predict, test
from .task import TrainingDivergedError, checkpoint_config, load_weights, model_from_checkpoint

__all__ = [
    "ClassificationModule",
    "DataSettings",
    "TrainingDivergedError",
    "VideoDataModule",
    "checkpoint_config",
    "fit",
    "load_weights",
    "model_from_checkpoint",
    "predict",
    "resolve_data_settings",
    "test",
]
