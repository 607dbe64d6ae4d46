"""Small shared tools: FLOPs counting, safe weight-file IO."""

from .flops import FlopsResult, count_flops, count_params

__all__ = ["FlopsResult", "count_flops", "count_params"]
