"""See what the model sees: Grad-CAM, attention maps and rollout, SIFA offsets, EVAD kept tokens.

>>> from kinetix.explain import explain
>>> expl, files = explain("clip.mp4", "runs/demo_tsm/checkpoints/best", "explain_out")
>>> files["png"], files["mp4"]  # frames x maps grid, overlay video

Library pieces: :func:`explain_video` (a loaded model), :func:`gradcam`, :func:`attention_maps`,
:func:`attention_rollout`, :func:`offset_field`, :func:`mask_mass_share`, :func:`write_explanation`.
"""

from .api import (
    METHODS,
    Explanation,
    class_index,
    explain,
    explain_clip,
    explain_video,
    load_explainable,
    mask_for_view,
    mask_mass_share,
    methods_for,
    write_comparison,
    write_explanation,
)
from .attention import attention_maps, attention_rollout, stage_matrix
from .gradcam import gradcam, gradcam_layers
from .offsets import offset_blocks, offset_field

__all__ = [
    "METHODS",
    "Explanation",
    "attention_maps",
    "attention_rollout",
    "class_index",
    "explain",
    "explain_clip",
    "explain_video",
    "gradcam",
    "gradcam_layers",
    "load_explainable",
    "mask_for_view",
    "mask_mass_share",
    "methods_for",
    "offset_blocks",
    "offset_field",
    "stage_matrix",
    "write_comparison",
    "write_explanation",
]
