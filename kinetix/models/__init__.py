"""Recognisers and the model registry. Importing this package registers every model."""

from ._builder import (
    convert_checkpoint,
    convert_with_report,
    load_checkpoint,
    load_pretrained,
    save_model_weights,
)
from ._pretrained import PretrainedCfg
from ._registry import (
    create_model,
    get_pretrained_cfg,
    is_model,
    list_models,
    model_entrypoint,
    register_model,
)
from ._vit_init import init_from_image_vit


def _import_families() -> None:
    """Import every public module of this package: each model file registers its entry points."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_families()

__all__ = [
    "PretrainedCfg",
    "convert_checkpoint",
    "convert_with_report",
    "create_model",
    "get_pretrained_cfg",
    "init_from_image_vit",
    "is_model",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "model_entrypoint",
    "register_model",
    "save_model_weights",
]
