"""Checks of the merge job's own options (not the method's hyperparameters), before anything is opened."""

from __future__ import annotations

from mergelab.engine.device import resolve_device
from mergelab.engine.output import parse_size
from mergelab.methods import MergeConfigError


def check_job_options(*, device: str, max_shard_size: int | str, allow_nonfinite: bool) -> None:
    """Raise a one-line error for a job option of the wrong type or out of range.

    `device` must name an available device, `max_shard_size` be a positive byte count or a size such as
    "5GB" (a bool is not a size), `allow_nonfinite` be a bool.
    """
    if not isinstance(device, str):
        raise MergeConfigError(f"device={device!r} must be a string: auto, cpu, cuda or cuda:N")
    resolve_device(device)
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (int, str)):
        raise MergeConfigError(f"max_shard_size={max_shard_size!r} must be a byte count or a size like 5GB")
    if parse_size(max_shard_size) < 1:
        raise MergeConfigError(f"max_shard_size={max_shard_size!r} must be at least 1 byte")
    if not isinstance(allow_nonfinite, bool):
        raise MergeConfigError(f"allow_nonfinite={allow_nonfinite!r} must be true or false")
