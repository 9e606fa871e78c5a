"""Merging checkpoints from Python (`merge`, `merge_with_report`, `load_merged_model`) and from the command
line (`mergelab merge`, in `mergelab.api.cli`)."""

from mergelab.api.mergekit_config import merge_from_yaml
from mergelab.api.merging import load_merged_model, merge, merge_with_report

__all__ = ["load_merged_model", "merge", "merge_from_yaml", "merge_with_report"]
