"""A run never records a row for a non-finite model: its merged weights and its scores are checked first.

The engine already refuses NaN or inf inputs and merged tensors unless `allow_nonfinite` (PLeaS included);
these checks cover what it lets through (`allow_nonfinite=true`) and scores that come out undefined.
Checking the parameters is one reduction per tensor, small next to evaluating the model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch

from mergelab.engine.finite import NonFiniteError, nonfinite_count


def refuse_nonfinite_model(spec, model: torch.nn.Module) -> None:
    """Raise NonFiniteError naming the first parameters with NaN or inf and the total count."""
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())  # tied weights once
    counts = {name: nonfinite_count(tensor.detach()) for name, tensor in tensors}
    bad = {name: count for name, count in counts.items() if count}
    if bad:
        names = ", ".join(f"'{name}' ({count})" for name, count in list(bad.items())[:3])
        raise NonFiniteError(
            f"run {spec.run_id}: the merged model has {sum(bad.values())} non-finite value(s) in "
            f"{len(bad)} tensor(s), e.g. {names}; no row is recorded"
        )


def refuse_nonfinite_scores(spec, scores: Mapping[str, float]) -> None:
    """Raise NonFiniteError when a task's score is NaN or infinite."""
    bad = sorted(task for task, score in scores.items() if not math.isfinite(score))
    if bad:
        raise NonFiniteError(f"run {spec.run_id}: non-finite score on {', '.join(bad)}; no row is recorded")
