"""The on-disk cache of per-expert statistics (Fisher diagonals, Gram matrices, activations).

A statistic is computed once per (expert checkpoint, data spec, split, n_examples, settings) and stored as
one safetensors file under `$MERGELAB_HOME/stats/<kind>/`, with the key and the checkpoint's content hash in
the file's metadata. One file exists per key; its name hashes the key with the checkpoint's resolved path,
and a lookup compares the stored content hash with the checkpoint's current one: a checkpoint changed in
place (re-trained, overwritten) invalidates its entries, which are then deleted and recomputed. Files are
written to a temporary name and renamed into place, so a crash never leaves a partial entry.

Statistics are read back lazily, tensor by tensor, with the project's safetensors reader (`StatisticFile`),
so a merge holds one tensor of each expert's statistic at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mergelab.engine.safetensors_io import SafetensorsError, SafetensorsReader
from mergelab.zoo.cache import mergelab_home

STATS_VERSION = 1
_DIGESTS: dict[tuple, str] = {}


def stats_home() -> Path:
    """Root of the statistic cache: `$MERGELAB_HOME/stats` (default `~/.cache/mergelab/stats`)."""
    return mergelab_home() / "stats"


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 over the names and bytes of every file of a checkpoint (its directory, or the one file).

    Weights, config and tokenizer all count: a change to any of them changes what a statistic measures. The
    digest is memoized per process by the files' sizes and modification times.
    """
    path = Path(path).expanduser().resolve()
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if path.is_dir()
        else [path]
    )
    stamp = (str(path), *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _DIGESTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
        _DIGESTS[stamp] = digest.hexdigest()
    return _DIGESTS[stamp]


@dataclass(frozen=True)
class StatisticKey:
    """What a statistic depends on besides the checkpoint's bytes.

    `kind` names the statistic ("fisher", "gram", ...); `data` is the data spec and `fingerprint` the hash of
    the examples actually used (`ExampleSet.fingerprint`); `settings` holds everything else that changes the
    numbers (estimator, seed, ...), JSON-serializable.
    """

    kind: str
    checkpoint: str
    data: str
    split: str
    n_examples: int
    fingerprint: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        return {
            "version": STATS_VERSION,
            "kind": self.kind,
            "checkpoint": str(Path(self.checkpoint).expanduser().resolve()),
            "data": self.data,
            "split": self.split,
            "n_examples": self.n_examples,
            "fingerprint": self.fingerprint,
            "settings": dict(self.settings),
        }

    @property
    def entry_name(self) -> str:
        encoded = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]


def read_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header (empty when there is none)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    return dict(header.get("__metadata__") or {})


class StatisticFile:
    """One expert's cached statistic, read tensor by tensor; `get` is None for tensors it does not cover."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self._reader = SafetensorsReader(self.path)

    @property
    def names(self) -> list[str]:
        return sorted(self._reader.entries)

    @property
    def norm(self) -> float:
        """L2 norm of the whole statistic over every tensor it covers (stored at computation time)."""
        return float(self.metadata["norm"])

    def get(self, name: str) -> torch.Tensor | None:
        return self._reader.get(name) if name in self._reader.entries else None

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> StatisticFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def statistic_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over all entries of all tensors (float64 accumulation)."""
    return float(sum(float(t.double().square().sum()) for t in tensors.values()) ** 0.5)


@dataclass(frozen=True)
class CacheResult:
    """Where a statistic lies and whether it was already cached (`hit`) or computed now."""

    path: Path
    hit: bool
    seconds: float


class StatisticCache:
    """Statistic files under `root` (default `stats_home()`), one per key, checked against the checkpoint."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else stats_home()

    def path(self, key: StatisticKey) -> Path:
        return self.root / key.kind / f"{key.entry_name}.safetensors"

    def lookup(self, key: StatisticKey) -> Path | None:
        """The entry's path if it exists and was computed from the checkpoint as it is now; a stale or
        unreadable entry is deleted (invalidated) and None returned."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            metadata = read_metadata(path)
            SafetensorsReader(path).close()
        except (OSError, ValueError, SafetensorsError):
            metadata = {}
        if metadata.get("checkpoint_sha256") == checkpoint_digest(key.checkpoint):
            return path
        path.unlink(missing_ok=True)
        return None

    def store(
        self, key: StatisticKey, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
    ) -> Path:
        """Write `tensors` (float32) for `key`, atomically; returns the entry's path."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            **{name: str(value) for name, value in metadata.items()},
            "key": json.dumps(key.identity(), sort_keys=True),
            "checkpoint_sha256": checkpoint_digest(key.checkpoint),
            "norm": repr(statistic_norm(tensors)),
        }
        staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            contiguous = {
                name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()
            }
            save_file(contiguous, str(staging), metadata=header)
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)
        return path

    def fetch(
        self,
        key: StatisticKey,
        compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, str]]],
    ) -> CacheResult:
        """The cached entry for `key`, computing and storing it first on a miss.

        `compute` returns the statistic's tensors (keyed by checkpoint tensor name) and extra metadata.
        """
        started = time.perf_counter()
        path = self.lookup(key)
        if path is not None:
            return CacheResult(path, True, time.perf_counter() - started)
        tensors, metadata = compute()
        path = self.store(key, tensors, metadata)
        return CacheResult(path, False, time.perf_counter() - started)
