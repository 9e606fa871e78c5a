"""Type and range checks of hyperparameter values; each failure names the method, the option and the value.

YAML and Hydra give plain numbers, so a real option accepts an int or a float (not a bool), and an integer
option an int (not a bool).
"""

from __future__ import annotations

import math
from typing import Any

from mergelab.methods.base import MergeConfigError


def check_real(
    method: str,
    option: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
) -> None:
    """Raise MergeConfigError unless `value` is a finite number in [low, high] (or (low, high] if `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MergeConfigError(f"method '{method}': {option}={value!r} must be a finite number")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above:
        opening = "(" if low is None or low_open else "["
        closing = ")" if high is None else "]"
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = f"{opening}{left}, {right}{closing}"
        raise MergeConfigError(f"method '{method}': {option}={value!r} must be in {interval}")


def check_integer(method: str, option: str, value: Any) -> None:
    """Raise MergeConfigError unless `value` is an int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MergeConfigError(f"method '{method}': {option}={value!r} must be an integer")


def check_weights(method: str, weights: Any) -> None:
    """Raise MergeConfigError unless `weights` is None or a list of finite numbers."""
    if weights is None:
        return
    if not isinstance(weights, (list, tuple)):
        raise MergeConfigError(f"method '{method}': weights={weights!r} must be a list of numbers or null")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise MergeConfigError(f"method '{method}': weights={weights!r} must hold finite numbers only")
