"""Merge methods: pure tensor math behind a registry (`get_method`, `METHODS`)."""

from mergelab.methods.base import MergeConfigError, MergeMethod, MergeWarning, TensorContext, TrimRule
from mergelab.methods.registry import ALIASES, METHODS, get_method

__all__ = [
    "ALIASES",
    "METHODS",
    "MergeConfigError",
    "MergeMethod",
    "MergeWarning",
    "TensorContext",
    "TrimRule",
    "get_method",
]
