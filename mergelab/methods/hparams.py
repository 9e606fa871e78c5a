"""Type checks of hyperparameters against the annotations of a method's `Params` dataclass.

Every method gets the same checks for free, before any work: a `float` field takes an int or a float but not
a bool, a string or NaN/inf; an `int` field takes an int but not a bool; a `bool` field takes only true or
false; a `str` field only a string; `Literal[...]` one of its choices; `tuple[float, ...]` a list or tuple
of such floats (a bare number is refused, not iterated); `X | None` also None; `X | Y` either. Values come
back with lists turned into tuples (an int given for a float field stays as given, so messages and records
show what the user wrote), and a method's range checks in `validate` only ever see well-typed values.
Errors are one line naming the method, the option and the value.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from mergelab.methods.errors import MergeConfigError


class _Mismatch(Exception):
    """`value` does not fit an annotation; `expected` says what would."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


SINGULAR = {
    float: "a finite number",
    int: "an integer",
    bool: "true or false",
    str: "a string",
    type(None): "null",
}
PLURAL = {float: "numbers", int: "integers", bool: "booleans", str: "strings"}


def _describe(annotation: Any) -> str:
    """What a value of `annotation` looks like, for the error message."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is tuple:
        return (
            f"a list of {PLURAL.get(args[0], 'values')}"
            if len(args) == 2 and args[1] is Ellipsis
            else "a list"
        )
    return SINGULAR.get(annotation, getattr(annotation, "__name__", str(annotation)))


def convert(value: Any, annotation: Any) -> Any:
    """`value` as a value of `annotation` (lists as tuples); raises _Mismatch."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value in args:
            return value
        if isinstance(value, bool) and value in args and any(isinstance(arg, bool) for arg in args):
            return value
        raise _Mismatch(_describe(annotation))
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return convert(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch(_describe(annotation))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(_describe(annotation))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(item, args[0]) for item in value)
        if len(args) != len(value):
            raise _Mismatch(_describe(annotation))
        return tuple(convert(item, arg) for item, arg in zip(value, args))
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Any:
        return value
    raise _Mismatch(_describe(annotation))


def checked_hparams(method: str, params: type, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """`hparams` converted to the types of `params`' fields; MergeConfigError names the first that does not fit."""
    hints = get_type_hints(params)
    converted = {}
    for name, value in hparams.items():
        try:
            converted[name] = convert(value, hints[name])
        except _Mismatch as mismatch:
            raise MergeConfigError(
                f"method '{method}': {name}={value!r} must be {mismatch.expected}"
            ) from None
    return converted
