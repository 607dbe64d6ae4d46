"""kinetix: efficient video understanding in PyTorch.

>>> import kinetix
>>> model = kinetix.create_model("tsm_r50", num_classes=174, num_frames=8)
"""

__version__ = "0.1.0"

from kinetix import detection as detection
from kinetix import models as models
from kinetix.detection import evad as _evad  # noqa: F401  (registers the detection models)
from kinetix.errors import KinetixError
from kinetix.models import PretrainedCfg, create_model, list_models, register_model
from kinetix.utils import count_flops

__all__ = [
    "KinetixError",
    "PretrainedCfg",
    "__version__",
    "count_flops",
    "create_model",
    "export_onnx",
    "list_models",
    "optimize_for_inference",
    "register_model",
]

_DEPLOY = ("export_onnx", "optimize_for_inference")


def __getattr__(name: str):
    """``kinetix.export_onnx`` / ``kinetix.optimize_for_inference``, imported on first use."""
    if name in _DEPLOY:
        from kinetix import deploy

        return getattr(deploy, name)
    raise AttributeError(f"module 'kinetix' has no attribute {name!r}")
