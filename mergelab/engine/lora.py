"""PEFT LoRA adapters as experts: the expert's tensors are its base's, with each adapted weight's delta
`scale * B @ A` added when that tensor is read, so merging adapters never materializes a full checkpoint.

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` (as `peft`'s
`save_pretrained` writes them). Keys are read as PEFT saves them (`base_model.model.` + module name):
`<module>.lora_A.weight` / `lora_B.weight` (linear layers; `fan_in_fan_out` transposes the delta),
`<module>.lora_embedding_A` / `lora_embedding_B` (embeddings: delta `(B @ A).T`), `<module>.lora_B.bias`
(`lora_bias`), `<module>.base_layer.weight` (a copy of the base layer that `save_embedding_layers`
stores; it must match the base's shape and is otherwise ignored), and any other tensor (`modules_to_save`,
trained biases) replaces the base's value outright. The scale is `lora_alpha / r` (`lora_alpha / sqrt(r)`
with `use_rslora`), with per-module `rank_pattern` / `alpha_pattern` as PEFT matches them. Variants that
change the merged weight otherwise (DoRA, layer replication, parameter targets) are refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mergelab.engine.checkpoint import Checkpoint, CheckpointError, TensorInfo, open_checkpoint
from mergelab.engine.safetensors_io import SafetensorsError, SafetensorsReader

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# adapter options that change the merged weight in ways `scale * B @ A` does not describe
UNSUPPORTED = {
    "use_dora": "DoRA",
    "layer_replication": "layer replication",
    "target_parameters": "parameter targets",
}


def is_adapter(reference: object) -> bool:
    """True for a local directory holding a PEFT adapter config."""
    return isinstance(reference, (str, Path)) and (Path(reference).expanduser() / ADAPTER_CONFIG).is_file()


@dataclass(frozen=True)
class LowRankUpdate:
    """The adapter's factors of one base tensor: delta = scale * up @ down (transposed for `transpose`)."""

    down: str  # key of A
    up: str  # key of B
    scale: float
    transpose: bool


class LoraCheckpoint:
    """A LoRA adapter over `base`, read tensor by tensor as a full expert checkpoint."""

    def __init__(self, directory: Path, base: Checkpoint, label: str) -> None:
        self.label = label
        self.directory = None  # no model directory: data-aware methods cannot run an adapter alone
        self.adapter_directory = directory
        self._base = base
        self._config = _read_config(directory / ADAPTER_CONFIG)
        weights = directory / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{label}: {weights} is missing (only safetensors adapters are read)")
        try:
            self._reader = SafetensorsReader(weights)
        except SafetensorsError as error:
            raise CheckpointError(f"{label}: {error}") from None
        self._updates: dict[str, LowRankUpdate] = {}
        self._bias_updates: dict[str, tuple[str, float]] = {}  # bias name -> (key of B's bias, scale)
        self._replacements: dict[str, str] = {}
        self._plan(base.infos())

    def _plan(self, base_infos: Mapping[str, TensorInfo]) -> None:
        """Map every adapter key to the base tensor it changes, checking names and shapes now."""
        factors: dict[str, dict[str, str]] = {}
        biases: dict[str, str] = {}
        for key in sorted(self._reader.entries):
            name = key.removeprefix(PREFIX)
            match = re.fullmatch(
                r"(.+)\.(lora_A|lora_B)\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)", name
            )
            if match:
                module = match.group(1) or match.group(3)
                role = (match.group(2) or match.group(4))[-1]
                factors.setdefault(module, {})[role] = key
            elif name.endswith(".lora_B.bias"):
                biases[self._target(name.removesuffix(".lora_B.bias") + ".bias", base_infos, key)] = key
            elif ".base_layer." in name:
                target = self._target(name.replace(".base_layer.", "."), base_infos, key)
                self._check_shape(key, target, base_infos)
            elif "lora_" in name:
                raise CheckpointError(f"{self.label}: adapter tensor '{key}' is of an unsupported LoRA kind")
            else:
                target = self._target(name, base_infos, key)
                self._check_shape(key, target, base_infos)
                self._replacements[target] = key
        for module, pair in sorted(factors.items()):
            if set(pair) != {"A", "B"}:
                raise CheckpointError(
                    f"{self.label}: module '{module}' has lora_{set(pair).pop()} without its pair"
                )
            target = self._target(module + ".weight", base_infos, pair["A"])
            embedding = pair["A"].endswith("lora_embedding_A")
            rank = self._reader.entries[pair["A"]].shape[0]
            update = LowRankUpdate(
                down=pair["A"],
                up=pair["B"],
                scale=self._scale(module, rank),
                transpose=embedding or bool(self._config.get("fan_in_fan_out")),
            )
            delta_shape = self._delta_shape(update)
            if delta_shape != base_infos[target].shape:
                raise CheckpointError(
                    f"{self.label}: LoRA delta of '{target}' has shape {list(delta_shape)} but the base's "
                    f"tensor is {list(base_infos[target].shape)}"
                )
            self._updates[target] = update
        for target, key in biases.items():
            weight_update = self._updates.get(target.removesuffix(".bias") + ".weight")
            if weight_update is None:
                raise CheckpointError(f"{self.label}: adapter tensor '{key}' has no LoRA weights beside it")
            self._bias_updates[target] = (key, weight_update.scale)

    def _target(self, name: str, base_infos: Mapping[str, TensorInfo], key: str) -> str:
        if name not in base_infos:
            raise CheckpointError(
                f"{self.label}: adapter tensor '{key}' adapts '{name}', which the base lacks"
            )
        return name

    def _check_shape(self, key: str, target: str, base_infos: Mapping[str, TensorInfo]) -> None:
        shape = self._reader.entries[key].shape
        if shape != base_infos[target].shape:
            raise CheckpointError(
                f"{self.label}: adapter tensor '{key}' has shape {list(shape)} but the base's "
                f"'{target}' is {list(base_infos[target].shape)}"
            )

    def _delta_shape(self, update: LowRankUpdate) -> tuple[int, ...]:
        rows, cols = self._reader.entries[update.up].shape[0], self._reader.entries[update.down].shape[1]
        return (cols, rows) if update.transpose else (rows, cols)

    def _scale(self, module: str, rank: int) -> float:
        alpha = float(
            _pattern_value(self._config.get("alpha_pattern") or {}, module, self._config["lora_alpha"])
        )
        return alpha / (math.sqrt(rank) if self._config.get("use_rslora") else rank)

    def infos(self) -> dict[str, TensorInfo]:
        """The base's tensors; adapted ones are produced in float32 (the delta is not rounded to the base's
        dtype before merging)."""
        infos = self._base.infos()
        return {
            name: TensorInfo(torch.float32, info.shape)
            if name in self._updates or name in self._bias_updates
            else info
            for name, info in infos.items()
        }

    def get(self, name: str) -> torch.Tensor:
        if name in self._replacements:
            return self._read(self._replacements[name])
        value = self._base.get(name)
        if name in self._updates:
            update = self._updates[name]
            delta = self._read(update.up).float() @ self._read(update.down).float()
            value = value.float() + update.scale * (delta.T if update.transpose else delta)
        if name in self._bias_updates:
            key, scale = self._bias_updates[name]
            value = value.float() + scale * self._read(key).float()
        return value

    def _read(self, key: str) -> torch.Tensor:
        try:
            return self._reader.get(key)
        except SafetensorsError as error:
            raise CheckpointError(f"{self.label}: {error}") from None

    def close(self) -> None:
        self._reader.close()


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read adapter config ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: adapter config is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(
            f"{path}: peft_type {config.get('peft_type')!r} is not supported; only LORA adapters"
        )
    for option, what in UNSUPPORTED.items():
        if config.get(option):
            raise CheckpointError(f"{path}: {what} adapters ({option}) are not supported")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise CheckpointError(f"{path}: lora_alpha is missing or not a number")
    return config


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """PEFT's per-module override: the first pattern that matches the end of the module name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def open_expert(
    reference: str | Path | Mapping[str, torch.Tensor], base: Checkpoint, label: str
) -> Checkpoint:
    """An expert checkpoint: a LoRA adapter over `base` when `reference` is an adapter directory, else
    whatever `open_checkpoint` opens."""
    if is_adapter(reference):
        return LoraCheckpoint(Path(reference).expanduser(), base, label)
    return open_checkpoint(reference, label)
