"""Checkpoints as mergelab sees them: a set of named tensors read one at a time, plus the files around them.

A checkpoint is a Hugging Face model directory (single or sharded safetensors, or `.bin` weights), a single
safetensors file, a hub id (downloaded through the hub cache; offline it must already be cached), or an
in-memory state dict. `check_compatible` compares the experts with the base before anything is written.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import torch

from mergelab.engine.safetensors_io import SafetensorsError, SafetensorsReader

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Files copied from the base next to the merged weights (config, generation config, tokenizer).
SIDECAR_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "*.tiktoken",
    "chat_template.jinja",
)
# `.bin` files that Trainer saves beside the weights; never merged.
NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin"})
_VOCAB_TENSOR = re.compile(r"(embed|lm_head|wte|shared|word_embeddings|output\.weight$)")


class CheckpointError(ValueError):
    """An input checkpoint that cannot be merged; the message names the file, tensor or option at fault."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]


class Checkpoint(Protocol):
    """What the engine needs from a checkpoint."""

    label: str
    directory: Path | None

    def infos(self) -> dict[str, TensorInfo]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


class StateDictCheckpoint:
    """An in-memory state dict: string names to tensors with data (detached, so autograd never sees a merge)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], label: str) -> None:
        self.label = label
        self.directory = None
        self._tensors = {name: _checked_tensor(label, name, value) for name, value in state_dict.items()}

    def infos(self) -> dict[str, TensorInfo]:
        return {name: TensorInfo(t.dtype, tuple(t.shape)) for name, t in self._tensors.items()}

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def close(self) -> None:
        """Nothing to release."""


def _checked_tensor(label: str, name: object, value: object) -> torch.Tensor:
    """`value` detached from autograd, after checking it is a dense tensor with data under a string name."""
    if not isinstance(name, str):
        raise CheckpointError(f"{label}: state dict key {name!r} is a {type(name).__name__}, not a string")
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{label}: '{name}' is a {type(value).__name__}, not a tensor")
    if value.is_meta:
        raise CheckpointError(f"{label}: tensor '{name}' is on the meta device (it has no values)")
    if value.layout != torch.strided:
        raise CheckpointError(f"{label}: tensor '{name}' is {value.layout}; only dense tensors can be merged")
    return value.detach()


class SafetensorsCheckpoint:
    """One or more safetensors files read lazily, tensor by tensor."""

    def __init__(self, files: Sequence[Path], label: str, directory: Path | None) -> None:
        self.label = label
        self.directory = directory
        self._readers: list[SafetensorsReader] = []
        self._where: dict[str, SafetensorsReader] = {}
        try:
            for path in files:
                reader = SafetensorsReader(path)
                self._readers.append(reader)
                for name in reader.entries:
                    if name in self._where:
                        raise CheckpointError(
                            f"{label}: tensor '{name}' is stored twice, in {self._where[name].path} and {path}"
                        )
                    self._where[name] = reader
        except (SafetensorsError, CheckpointError) as error:
            self.close()
            raise CheckpointError(str(error)) from None

    def infos(self) -> dict[str, TensorInfo]:
        return {
            name: TensorInfo(reader.entries[name].dtype, reader.entries[name].shape)
            for name, reader in self._where.items()
        }

    def file_of(self, name: str) -> Path | None:
        """The file holding tensor `name`, or None when no file does."""
        reader = self._where.get(name)
        return None if reader is None else reader.path

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._where[name].get(name)
        except SafetensorsError as error:
            raise CheckpointError(str(error)) from None

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


class TorchBinCheckpoint(StateDictCheckpoint):
    """`.bin` weights, loaded with `torch.load(weights_only=True, mmap=True)` so nothing executes."""

    def __init__(self, files: Sequence[Path], label: str, directory: Path | None) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for path in files:
            try:
                # Only the zip format (torch >= 1.6) can be memory-mapped; older files are read whole.
                mmap = zipfile.is_zipfile(path)
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except Exception as error:  # torch raises several types for a bad file
                raise CheckpointError(f"{path}: cannot load weights ({error})") from None
            is_state_dict = isinstance(loaded, Mapping) and all(
                isinstance(value, torch.Tensor) for value in loaded.values()
            )
            if not is_state_dict:
                raise CheckpointError(f"{path}: not a state dict of tensors ({type(loaded).__name__})")
            tensors.update(loaded)
        super().__init__(tensors, label)
        self.directory = directory


def _index_files(directory: Path, index_name: str) -> list[Path]:
    """The shard files a sharded checkpoint's index names, after checking the index's form and every name."""
    return sorted({directory / name for name in _weight_map(directory, index_name).values()})


def _weight_map(directory: Path, index_name: str) -> dict[str, str]:
    """The index's map from tensor names to shard files, each checked to be an existing file inside `directory`."""
    index_path = directory / index_name
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{index_path}: corrupted index ({_reason(error)})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index_path}: corrupted index (it must be a JSON object whose 'weight_map' maps tensor names "
            "to shard files)"
        )
    for name, file_name in weight_map.items():
        if not isinstance(file_name, str) or not _is_plain_relative(file_name):
            raise CheckpointError(
                f"{index_path}: tensor '{name}' is mapped to {file_name!r}, which is not a file name inside "
                f"{directory}"
            )
    files = [directory / name for name in sorted(set(weight_map.values()))]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise CheckpointError(f"{index_path}: shard file(s) missing: {missing}")
    return weight_map


def _open_indexed_safetensors(directory: Path, label: str) -> SafetensorsCheckpoint:
    """A sharded safetensors checkpoint whose every indexed tensor is in the shard its index names."""
    weight_map = _weight_map(directory, SAFETENSORS_INDEX)
    checkpoint = SafetensorsCheckpoint(_index_files(directory, SAFETENSORS_INDEX), label, directory)
    misplaced = [
        name for name, file_name in weight_map.items() if checkpoint.file_of(name) != directory / file_name
    ]
    if misplaced:
        checkpoint.close()
        raise CheckpointError(
            f"{directory / SAFETENSORS_INDEX}: tensor(s) not in the shard the index names: {_few(sorted(misplaced))}"
        )
    return checkpoint


def _is_plain_relative(name: str) -> bool:
    """A relative path without `..` (no absolute path, drive or parent step can leave the model directory)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not path.is_absolute() and ".." not in path.parts and ":" not in name


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _weight_files(directory: Path, single_name: str, suffix: str) -> list[Path]:
    """The one standard weights file when present, else every `*{suffix}` file except training artifacts."""
    if (directory / single_name).is_file():
        return [directory / single_name]
    return sorted(
        path for path in directory.glob(f"*{suffix}") if path.is_file() and path.name not in NOT_WEIGHTS
    )


def _open_directory(directory: Path, label: str) -> Checkpoint:
    """Safetensors first (index, `model.safetensors`, any `*.safetensors`), then `.bin` in the same order."""
    if (directory / SAFETENSORS_INDEX).exists():
        return _open_indexed_safetensors(directory, label)
    safetensors_files = _weight_files(directory, "model.safetensors", ".safetensors")
    if safetensors_files:
        return SafetensorsCheckpoint(safetensors_files, label, directory)
    if (directory / BIN_INDEX).exists():
        return TorchBinCheckpoint(_index_files(directory, BIN_INDEX), label, directory)
    bin_files = _weight_files(directory, "pytorch_model.bin", ".bin")
    if bin_files:
        return TorchBinCheckpoint(bin_files, label, directory)
    raise CheckpointError(f"{directory}: no model weights found (*.safetensors or *.bin)")


def _looks_like_hub_id(reference: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", reference) is not None


def _download(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=["*.safetensors", "*.json", *SIDECAR_PATTERNS]))
    except Exception as error:  # offline, unknown repo, gated repo
        raise CheckpointError(
            f"'{hub_id}' is not a local path and could not be fetched from the Hugging Face hub "
            f"({type(error).__name__}); download it first or pass a local directory"
        ) from None


def open_checkpoint(reference: str | Path | Mapping[str, torch.Tensor], label: str) -> Checkpoint:
    """Open a model directory, a safetensors file, a hub id or a state dict for lazy reading."""
    if isinstance(reference, Mapping):
        return StateDictCheckpoint(reference, label)
    path = Path(reference).expanduser()
    if not path.exists():
        if isinstance(reference, str) and _looks_like_hub_id(reference):
            path = _download(reference)
        else:
            raise CheckpointError(f"{label}: path does not exist: {reference}")
    if path.is_dir():
        return _open_directory(path, label)
    if path.suffix == ".safetensors":
        return SafetensorsCheckpoint([path], label, path.parent)
    if path.suffix in {".bin", ".pt", ".pth"}:
        return TorchBinCheckpoint([path], label, path.parent)
    raise CheckpointError(f"{label}: {path} is neither a model directory nor a weights file")


def is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def check_compatible(base: Checkpoint, experts: Sequence[Checkpoint]) -> dict[str, TensorInfo]:
    """The base's tensors, after checking every expert has exactly the same names and shapes."""
    reference = base.infos()
    for expert in experts:
        infos = expert.infos()
        missing = sorted(set(reference) - set(infos))
        extra = sorted(set(infos) - set(reference))
        if missing:
            raise CheckpointError(f"{expert.label} is missing tensor(s) the base has: {_few(missing)}")
        if extra:
            raise CheckpointError(f"{expert.label} has tensor(s) the base lacks: {_few(extra)}")
        for name, info in sorted(reference.items()):
            other = infos[name]
            if other.shape != info.shape:
                raise CheckpointError(_shape_message(expert.label, name, info.shape, other.shape))
            if is_float(info.dtype) != is_float(other.dtype):
                raise CheckpointError(
                    f"{expert.label}: tensor '{name}' is {other.dtype} but the base's is {info.dtype}"
                )
    return reference


def _shape_message(label: str, name: str, base_shape: tuple, expert_shape: tuple) -> str:
    message = (
        f"{label}: shape mismatch for tensor '{name}': base {list(base_shape)} vs expert {list(expert_shape)}"
    )
    if (
        _VOCAB_TENSOR.search(name)
        and len(base_shape) == len(expert_shape)
        and base_shape[0] != expert_shape[0]
        and base_shape[1:] == expert_shape[1:]
    ):
        message += f" (vocabulary size mismatch: {base_shape[0]} vs {expert_shape[0]} tokens)"
    return message


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def sidecar_files(directory: Path | None, *, require_config: bool = False) -> list[Path]:
    """The base's config, generation config and tokenizer files to copy next to merged weights.

    Every JSON file among them must parse (`config.json` as an object), so an output is never left with a
    config that cannot be loaded; `require_config` (the base is a model directory) makes `config.json`
    mandatory.
    """
    if directory is None:
        return []
    found = sorted(
        {path for pattern in SIDECAR_PATTERNS for path in directory.glob(pattern) if path.is_file()}
    )
    config = directory / "config.json"
    if require_config and config not in found:
        raise CheckpointError(f"{config}: missing; the base model directory needs a config.json")
    for path in found:
        if path.suffix != ".json":
            continue
        try:
            parsed = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise CheckpointError(f"{path}: not valid JSON ({_reason(error)})") from None
        if path == config and not isinstance(parsed, dict):
            raise CheckpointError(f"{path}: not a JSON object ({type(parsed).__name__})")
    return found
