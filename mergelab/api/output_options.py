"""What `mergelab.merge` writes, decided before any work: the output directory, its provenance, the base's files.

`out=None` means "return a state dict"; an empty string is an error rather than another way to say that, and
anything other than a path is refused. `overwrite` must be False, True or "force". The provenance record
(`mergelab.json`) is built here from the method's resolved hyperparameters, so it holds exactly what is
merged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergelab.engine.checkpoint import Checkpoint, CheckpointError, sidecar_files
from mergelab.engine.output import CheckpointOutput
from mergelab.engine.placement import check_overwrite
from mergelab.engine.provenance import merge_record
from mergelab.methods import MergeMethod


def requested_out(out: object) -> Path | None:
    """`out` as a path, or None for no output; '' and non-path values are errors naming the value."""
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise CheckpointError(f"out={out!r} must be a directory path (or None to get a state dict)")
    if not os.fspath(out).strip():
        raise CheckpointError("out is empty; give a directory path (or leave out unset to get a state dict)")
    return Path(out)


def open_output(
    out: object,
    *,
    overwrite: object,
    max_shard_size: int | str,
    method: MergeMethod,
    base: object,
    experts: Sequence[object],
    options: Mapping[str, Any],
    tensor_hparams: Mapping[str, Mapping[str, Any]] | None = None,
) -> CheckpointOutput | None:
    """The checkpoint output for `out` carrying this merge's `mergelab.json` record, or None without `out`.

    `options` are the merge options that exist for this call (device, max_shard_size, ...); per-tensor
    hyperparameters are recorded with the method's, under `hparams.tensor_hparams`.
    """
    mode = check_overwrite(overwrite)
    path = requested_out(out)
    if path is None:
        return None
    hparams = {key: value for key, value in method.describe().items() if key != "method"}
    if tensor_hparams:
        hparams["tensor_hparams"] = tensor_hparams
    record = merge_record(method.name, hparams, base, experts, options)
    return CheckpointOutput(
        path,
        overwrite=mode,
        max_shard_size=max_shard_size,
        provenance=record,
        inputs=_local_paths([base, *experts]),
    )


def _local_paths(references: Sequence[object]) -> list[Path]:
    """The inputs that are files or directories on this machine."""
    paths = [Path(ref).expanduser() for ref in references if not isinstance(ref, Mapping)]
    return [path.resolve() for path in paths if path.exists()]


def base_sidecars(base: object, checkpoint: Checkpoint) -> list[Path]:
    """The base's files to copy beside the merged weights, checked now: a base given as a model directory
    (or hub id) must have a `config.json`, and every JSON file copied must parse."""
    given_as_file = not isinstance(base, Mapping) and Path(base).expanduser().is_file()
    return sidecar_files(checkpoint.directory, require_config=not given_as_file)
