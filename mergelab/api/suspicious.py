"""Warnings for merges that are legal but probably not meant: the same expert twice, an expert that is the base.

Inputs are compared by identity, not content (no extra pass over the weights): the same state dict object,
the same local file or directory (also through a symlink), or the same hub id.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergelab.methods import MergeWarning


def _identity(reference: Any) -> tuple[str, object]:
    """What names one input: its object for a state dict, its resolved path on disk, else its hub id."""
    if isinstance(reference, Mapping):
        return "state dict", id(reference)
    path = Path(reference).expanduser()
    return str(reference), (path.resolve() if path.exists() else str(reference))


def warn_suspicious_inputs(base: Any, experts: Sequence[Any], uses_base: bool = True) -> list[str]:
    """Warn (MergeWarning) for each expert equal to an earlier one or, for a method that uses the base's
    values (`uses_base`), to the base; returns the messages. (A method that ignores the base, such as
    `average` or `slerp`, may well merge the model that also supplies the layout.)"""
    base_name, base_key = _identity(base)
    seen: dict[object, int] = {}
    messages = []
    for index, expert in enumerate(experts):
        name, key = _identity(expert)
        if uses_base and key == base_key:
            messages.append(f"expert {index} ({name}) is the base itself: its task vector is zero")
        if key in seen:
            messages.append(
                f"expert {index} ({name}) is expert {seen[key]} again: it counts twice in the merge"
            )
        seen.setdefault(key, index)
    for message in messages:
        warnings.warn(message, MergeWarning, stacklevel=3)
    return messages
