"""kinetix: efficient video understanding in PyTorch.

>>> import kinetix
>>> model = kinetix.create_model("tsm_r50", num_classes=174, num_frames=8)
"""

__version__ = "0.1.0"

from kinetix import models as models
from kinetix.errors import KinetixError
from kinetix.models import PretrainedCfg, create_model, list_models, register_model
from kinetix.utils import count_flops


def _import_detection() -> None:
    # Detection models register into the same registry; imported lazily-safe if present.
    import importlib.util

    if importlib.util.find_spec("kinetix.detection.evad") is not None:
        importlib.import_module("kinetix.detection.evad")


_import_detection()

__all__ = [
    "KinetixError",
    "PretrainedCfg",
    "__version__",
    "count_flops",
    "create_model",
    "list_models",
    "register_model",
]
