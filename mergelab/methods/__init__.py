"""Merge methods: pure tensor math behind a registry (`get_method`, `METHODS`)."""

from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext, TrimRule
from mergelab.methods.registry import METHODS, get_method

__all__ = ["METHODS", "MergeConfigError", "MergeMethod", "TensorContext", "TrimRule", "get_method"]
