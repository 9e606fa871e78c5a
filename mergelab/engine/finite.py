"""NaN and infinity checks on the tensors a merge reads and writes.

A NaN in one expert silently spreads into the merged model (and `mergelab run` would then score it), so
every float tensor is checked once, as stored, on the thread that reads it, and every merged tensor once
before it is written. The check is one reduction per tensor: a sum is finite only when every entry is
(NaN and infinities propagate through addition), so only a tensor whose sum is not finite is counted
entry by entry (a finite tensor whose sum overflows costs that second look and passes).
"""

from __future__ import annotations

import warnings

import torch

from mergelab.engine.checkpoint import CheckpointError
from mergelab.methods import MergeWarning


class NonFiniteError(CheckpointError):
    """A checkpoint tensor or a merged tensor holds NaN or infinite values."""


def nonfinite_count(tensor: torch.Tensor) -> int:
    """How many entries of `tensor` are NaN or +-inf (0 for integer and bool tensors)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return 0
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return tensor.numel() - int(torch.isfinite(tensor).sum())


class FiniteCheck:
    """Checks inputs and results of one merge; with `allow` it warns instead of raising and counts.

    `merged_nonfinite` counts the non-finite entries of the merged tensors (nonzero only when allowed); the
    merge reports it in `MergeReport.nonfinite_entries`.
    """

    def __init__(self, allow: bool = False) -> None:
        self.allow = allow
        self.merged_nonfinite = 0
        self._checked: set[str] = set()

    def inputs(self, name: str, labelled: list[tuple[str, torch.Tensor]]) -> None:
        """Check tensor `name` of each (checkpoint label, tensor) once per merge, however often it is read."""
        if name in self._checked:
            return
        self._checked.add(name)
        for label, tensor in labelled:
            count = nonfinite_count(tensor)
            if count:
                message = (
                    f"{label}: tensor '{name}' has {count} non-finite (NaN or inf) value(s) "
                    f"of {tensor.numel()}"
                )
                if not self.allow:
                    raise NonFiniteError(message + "; pass allow_nonfinite=true to merge it anyway")
                warnings.warn(message + " (allow_nonfinite)", MergeWarning, stacklevel=2)

    def merged(self, name: str, tensor: torch.Tensor, method: str) -> None:
        """Check one merged tensor; when its inputs were finite, a non-finite result is the method's doing."""
        count = nonfinite_count(tensor)
        if not count:
            return
        self.merged_nonfinite += count
        message = (
            f"merged tensor '{name}' has {count} non-finite (NaN or inf) value(s) of {tensor.numel()} "
            f"(method '{method}'"
        )
        if not self.allow:
            raise NonFiniteError(
                message + ", from finite inputs: the hyperparameters overflow the values or the "
                f"output dtype {str(tensor.dtype).removeprefix('torch.')})"
            )
        warnings.warn(message + "; allow_nonfinite)", MergeWarning, stacklevel=2)
