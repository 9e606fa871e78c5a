"""A merged checkpoint being written: sharded safetensors in a temporary directory renamed into place.

The shard plan is made before merging from the tensors' names, dtypes and shapes, so every shard's header is
written up front and tensors are appended as they are produced. Nothing appears at the output path until
the checkpoint is complete; any failure (including a full disk, or a SIGTERM) removes the temporary
directory. The finished directory gets `mergelab.json` and a model card (`mergelab.engine.provenance`), and
`mergelab.engine.placement` decides what may be replaced and puts it in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergelab.engine.checkpoint import SAFETENSORS_INDEX, CheckpointError, TensorInfo
from mergelab.engine.placement import (
    check_name_length,
    check_overwrite,
    check_replaceable,
    new_sibling_path,
    put_in_place,
    recover,
)
from mergelab.engine.provenance import write_provenance
from mergelab.engine.safetensors_io import PlannedTensor, SafetensorsWriter, tensor_nbytes
from mergelab.engine.termination import clean_exit_on_sigterm

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes in a size such as 5000000, "500MB" or "2GiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise CheckpointError(f"max_shard_size={size!r} is not a size like 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def plan_shards(
    names: Sequence[str], infos: dict[str, TensorInfo], max_shard_bytes: int
) -> list[list[PlannedTensor]]:
    """Consecutive groups of tensors, each under `max_shard_bytes` unless one tensor alone exceeds it."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for name in names:
        nbytes = tensor_nbytes(infos[name].dtype, infos[name].shape)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(PlannedTensor(name, infos[name].dtype, infos[name].shape))
        size += nbytes
    return shards


def _shard_name(index: int, count: int) -> str:
    return "model.safetensors" if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


class CheckpointOutput:
    """Writes a merged model directory atomically. Use as a context manager around the merge.

    `overwrite` is False, True (replace an earlier mergelab output) or "force" (replace anything); an empty
    directory is always replaced. `provenance` is the `mergelab.json` record written with the checkpoint;
    `inputs` are the merge's local input paths, which the output may neither be nor contain.
    Opening an output first cleans up after dead runs that wrote to the same path (see `placement.recover`).
    """

    def __init__(
        self,
        out: str | Path,
        *,
        overwrite: bool | str = False,
        max_shard_size: int | str = "5GB",
        provenance: Mapping[str, Any] | None = None,
        inputs: Sequence[Path] = (),
    ) -> None:
        self.overwrite = check_overwrite(overwrite)
        self.final_path = Path(out).expanduser().resolve()
        self.max_shard_bytes = parse_size(max_shard_size)
        self.provenance = provenance
        self.bytes_written = 0
        self.temp_path: Path | None = None
        self._writers: list[SafetensorsWriter] = []
        self._shard_of: dict[str, int] = {}
        self._exit_stack = contextlib.ExitStack()
        check_name_length(self.final_path)
        self._refuse_inputs(inputs)
        for note in recover(self.final_path):
            print(f"mergelab: warning: {note}", file=sys.stderr)
        check_replaceable(self.final_path, self.overwrite)

    def _refuse_inputs(self, inputs: Sequence[Path]) -> None:
        """Refuse an output that is, or contains, one of the inputs (replacing it would destroy an input)."""
        for path in inputs:
            if path == self.final_path or self.final_path in path.parents:
                raise CheckpointError(
                    f"output {self.final_path} would replace the input {path}; choose another out"
                )

    def __enter__(self) -> CheckpointOutput:
        try:
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            self.temp_path = new_sibling_path(self.final_path, "partial")
            self.temp_path.mkdir()  # with the umask's permissions, unlike mkdtemp
        except OSError as error:
            raise CheckpointError(f"output {self.final_path} is not writable ({error.strerror})") from None
        self._exit_stack.enter_context(clean_exit_on_sigterm())
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Remove the temporary directory unless `finish` moved it into place; name a full disk as such."""
        for writer in self._writers:
            with contextlib.suppress(OSError):  # flushing what is left fails again on a full disk
                writer.close()
        shutil.rmtree(self.temp_path, ignore_errors=True)
        self._exit_stack.close()
        if isinstance(exc, OSError):
            raise _write_error(self.final_path, exc) from None

    def start(self, names: Sequence[str], infos: dict[str, TensorInfo], sidecars: Sequence[Path]) -> None:
        """Copy the base's config and tokenizer files and lay out the shards for `names`."""
        for path in sidecars:
            shutil.copy2(path, self.temp_path / path.name)
        shards = plan_shards(names, infos, self.max_shard_bytes)
        weight_map = {}
        for index, shard in enumerate(shards):
            file_name = _shard_name(index, len(shards))
            self._writers.append(SafetensorsWriter(self.temp_path / file_name, shard))
            for tensor in shard:
                self._shard_of[tensor.name] = index
                weight_map[tensor.name] = file_name
        if len(shards) > 1:
            total = sum(tensor_nbytes(infos[name].dtype, infos[name].shape) for name in names)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.temp_path / SAFETENSORS_INDEX).write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n"
            )

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._writers[self._shard_of[name]].write(name, tensor)
        self.bytes_written += tensor.numel() * tensor.element_size()

    def finish(self) -> Path:
        """Check every tensor arrived, then move the directory into place (replacing an old one if allowed)."""
        incomplete = [writer.path.name for writer in self._writers if not writer.complete]
        if incomplete:
            raise CheckpointError(f"merge ended before shards {incomplete} were complete")
        for writer in self._writers:
            writer.close()
        if self.provenance is not None:
            write_provenance(self.temp_path, self.provenance)
        check_replaceable(self.final_path, self.overwrite)  # something may have appeared there meanwhile
        put_in_place(self.temp_path, self.final_path)
        return self.final_path


def _write_error(path: Path, error: OSError) -> CheckpointError:
    if error.errno == errno.ENOSPC:
        return CheckpointError(f"disk full while writing {path}; no output was left behind")
    return CheckpointError(f"cannot write {path}: {error.strerror or error}")
