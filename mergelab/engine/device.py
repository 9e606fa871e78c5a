"""The compute device of a merge, its CPU threads, and the process's peak memory, for reports."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mergelab.engine.checkpoint import CheckpointError


def resolve_device(device: str) -> torch.device:
    """`auto` is cuda when available, else cpu; `cuda` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device={device} requested but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise CheckpointError(f"device={device!r} is not one of ['auto', 'cpu', 'cuda']")
    return torch.device(device)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resolve_threads(threads: int | None) -> int:
    """The threads a merge computes on: `threads`, or by default torch's intra-op thread count, which is
    all physical cores unless OMP_NUM_THREADS or `torch.set_num_threads` says otherwise (joblib's workers,
    for one, get OMP_NUM_THREADS = cores // workers, so a sweep's merges do not oversubscribe the CPU)."""
    if threads is None:
        return torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise CheckpointError(f"threads={threads!r} must be a positive integer")
    return threads


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` while a merge runs (the reference path's ops, the
    NaN checks), and restored afterwards."""
    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
