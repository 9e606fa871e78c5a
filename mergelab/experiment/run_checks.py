"""Checks of a run's config that `validate` makes while planning, so that no job fails on them later.

Each raises `ConfigError` with one line naming the key: a study name that is not a plain directory name
(it becomes a path under `results_dir`), a `results_dir` that is a file, evaluation limits below 1,
experts named twice, weights that do not match the number of experts, and a device this machine lacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergelab.experiment.errors import ConfigError

STUDY_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_study(study: str) -> None:
    """`study` names one directory under `results_dir`: letters, digits, `_.-`, and not `.` or `..`."""
    if not STUDY_NAME.fullmatch(study) or ".." in study or study == ".":
        raise ConfigError(
            f"study: {study!r} is not allowed; use a plain name of letters, digits, '_', '.' and '-' "
            "(no '..', not empty): it is a directory under results_dir"
        )


def check_results_dir(results_dir: str) -> None:
    """`results_dir` is a directory, or can become one: neither it nor a parent is an existing file."""
    path = Path(results_dir).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ConfigError(f"results_dir: {results_dir!r} is not a directory ({candidate} is a file)")
            return


def check_eval_limits(max_examples: int | None, batch_size: int) -> None:
    if max_examples is not None and max_examples < 1:
        raise ConfigError(f"eval.max_examples: {max_examples} is not allowed; allowed: >= 1 or null (all)")
    if batch_size < 1:
        raise ConfigError(f"eval.batch_size: {batch_size} is not allowed; allowed: >= 1")


def check_unique_categories(categories: list[str] | None) -> None:
    """Each expert category at most once (a repeated one would merge one expert as two)."""
    if categories is None:
        return
    repeated = sorted({name for name in categories if categories.count(name) > 1})
    if repeated:
        raise ConfigError(f"experts.categories: {repeated[0]!r} is named more than once in {categories}")


def check_expert_weights(method: str, hparams: Mapping[str, Any], n_experts: int, key: str = "merge") -> None:
    """The method's per-expert options (weights) fit the number of experts the run merges."""
    from mergelab.methods import MergeConfigError, get_method

    try:
        get_method(method, **hparams).expert_weights(n_experts)
    except MergeConfigError as error:
        raise ConfigError(f"{key}: {error}") from None


def check_device_available(device: str) -> None:
    """The device exists on this machine (`cuda` without a GPU is refused here, not in the job)."""
    from mergelab.engine.checkpoint import CheckpointError
    from mergelab.engine.device import resolve_device

    try:
        resolve_device(device)
    except CheckpointError as error:
        raise ConfigError(f"device: {error}") from None
