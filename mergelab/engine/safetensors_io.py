"""Streaming safetensors files: read one tensor at a time, write a shard tensor by tensor.

mergelab reads with positioned reads instead of a memory map: a mapped file's resident pages count towards
the process's memory and grow with the model, while a read into a fresh buffer costs one tensor. The writer
lays out the header first (every shape is known before merging starts) and then appends each tensor's bytes
as it is produced, so no shard is ever held in memory. Files are validated against the format on open, so
a truncated or corrupted file is reported by name instead of failing deep inside a merge.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as one (truncated, corrupted, unknown dtype)."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_nbytes(dtype: torch.dtype, shape: Iterable[int]) -> int:
    return math.prod(shape) * element_size(dtype)


def _is_count(value: object) -> bool:
    """A non-negative JSON integer (not a bool, float or string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unique_names(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose names are all different (a repeated name would make the header ambiguous)."""
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"{repeated} appears twice")
    return dict(pairs)


class SafetensorsReader:
    """An open safetensors file whose tensors are read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries = self._read_header()
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()

    def _read_header(self) -> dict[str, TensorEntry]:
        """The tensors' entries, after the checks the reference `safetensors` library makes: a JSON object
        header in UTF-8, known dtypes, non-negative integer shapes whose byte size matches the offsets, and
        data offsets that tile the data section exactly (no overlap, no gap, nothing past the end or after)."""
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise SafetensorsError(
                        f"{self.path}: truncated safetensors file ({size} bytes, no header)"
                    )
                header_bytes = int.from_bytes(prefix, "little")
                if header_bytes > min(size - 8, _MAX_HEADER_BYTES):
                    raise SafetensorsError(
                        f"{self.path}: corrupted or truncated safetensors file "
                        f"(header claims {header_bytes} bytes, file has {size})"
                    )
                raw = handle.read(header_bytes)
        except OSError as error:
            raise SafetensorsError(f"{self.path}: cannot read ({error.strerror or error})") from None
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_names)
        except (ValueError, RecursionError) as error:  # bad UTF-8, bad JSON, a name twice, nesting
            raise SafetensorsError(f"{self.path}: corrupted safetensors header ({error})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupted safetensors header (not a JSON object)")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise SafetensorsError(
                f"{self.path}: corrupted safetensors header (__metadata__ must map names to strings)"
            )
        data_start = 8 + header_bytes
        entries = {name: self._entry(name, info, data_start) for name, info in header.items()}
        self._check_layout(entries, data_start, size - data_start)
        return entries

    def _entry(self, name: str, info: object, data_start: int) -> TensorEntry:
        def corrupted(reason: str) -> SafetensorsError:
            return SafetensorsError(
                f"{self.path}: corrupted safetensors entry for tensor '{name}' ({reason})"
            )

        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise corrupted("needs dtype, shape and data_offsets")
        dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise corrupted(f"unknown or unsupported dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
            raise corrupted(f"shape {shape!r} is not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise corrupted(f"data_offsets {offsets!r} is not two non-negative integers")
        begin, end = offsets
        if end < begin:
            raise corrupted(f"data_offsets {offsets} end before they begin")
        if end - begin != tensor_nbytes(dtype, shape):
            raise corrupted(
                f"bad size: shape {shape} of {info['dtype']} needs {tensor_nbytes(dtype, shape)} bytes, "
                f"the offsets give {end - begin}"
            )
        return TensorEntry(dtype, tuple(shape), data_start + begin, data_start + end)

    def _check_layout(self, entries: dict[str, TensorEntry], data_start: int, data_bytes: int) -> None:
        """The tensors' byte ranges, sorted, must cover the data section exactly once."""
        position = 0
        for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
            begin = entry.start - data_start
            if begin != position:
                what = "overlaps the tensor before it" if begin < position else "leaves a gap before it"
                raise SafetensorsError(f"{self.path}: corrupted safetensors file (tensor '{name}' {what})")
            position = begin + entry.nbytes
        if position > data_bytes:
            raise SafetensorsError(
                f"{self.path}: truncated safetensors file "
                f"(tensors need {position} data bytes, file has {data_bytes})"
            )
        if position < data_bytes:
            raise SafetensorsError(
                f"{self.path}: corrupted safetensors file ({data_bytes - position} bytes after the last tensor)"
            )

    def get(self, name: str) -> torch.Tensor:
        """A fresh CPU tensor holding `name`'s values."""
        entry = self.entries[name]
        buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
        if entry.nbytes:
            read = os.preadv(self._file.fileno(), [buffer.numpy()], entry.start)
            if read != entry.nbytes:
                raise SafetensorsError(f"{self.path}: truncated while reading tensor '{name}'")
        return buffer.view(entry.dtype).reshape(entry.shape)

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class SafetensorsWriter:
    """Writes one safetensors file whose tensors, in order, are known before their values are."""

    def __init__(self, path: Path, tensors: list[PlannedTensor]) -> None:
        self.path = Path(path)
        self.order = [tensor.name for tensor in tensors]
        self._expected = {tensor.name: tensor for tensor in tensors}
        self._next = 0
        header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor in tensors:
            nbytes = tensor_nbytes(tensor.dtype, tensor.shape)
            header[tensor.name] = {
                "dtype": DTYPE_NAMES[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._file.write(len(encoded).to_bytes(8, "little") + encoded)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; tensors must arrive in the planned order with the planned dtype and shape."""
        expected = self._expected[self.order[self._next]]
        if name != expected.name or tensor.dtype != expected.dtype or tuple(tensor.shape) != expected.shape:
            raise ValueError(
                f"{self.path}: expected tensor {expected}, got '{name}' {tensor.dtype} {tensor.shape}"
            )
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._next += 1

    @property
    def complete(self) -> bool:
        return self._next == len(self.order)

    def close(self) -> None:
        self._file.close()
