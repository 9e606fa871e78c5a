"""Maps method names to their classes."""

from __future__ import annotations

from typing import Any

from mergelab.methods.average import Average
from mergelab.methods.base import MergeConfigError, MergeMethod
from mergelab.methods.dare import Dare
from mergelab.methods.fisher import Fisher
from mergelab.methods.pleas import Pleas
from mergelab.methods.regmean import RegMean
from mergelab.methods.task_arithmetic import TaskArithmetic
from mergelab.methods.ties import Ties

METHODS: dict[str, type[MergeMethod]] = {
    method.name: method for method in (Average, TaskArithmetic, Ties, Dare, Fisher, RegMean, Pleas)
}


def get_method(name: str, **hparams: Any) -> MergeMethod:
    """Build the method `name` with validated hyperparameters; unknown names list the valid ones."""
    if name not in METHODS:
        raise MergeConfigError(f"unknown merge method '{name}'; valid: {sorted(METHODS)}")
    return METHODS[name](**hparams)
