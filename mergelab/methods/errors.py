"""The error and warning types of merge configuration, shared by every layer that checks one."""

from __future__ import annotations


class MergeConfigError(ValueError):
    """A method name or hyperparameter that mergelab cannot accept."""


class MergeWarning(UserWarning):
    """Input that is legal but probably not what was meant (the same expert twice, an expert equal to the
    base, non-finite values let through with `allow_nonfinite`); the command line prints it as one line."""
