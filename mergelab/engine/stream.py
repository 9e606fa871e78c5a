"""Reading checkpoints tensor by tensor, one name ahead of the consumer, as stored or as float32 slices."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from mergelab.engine.blockwise import TensorBlocks, upcast
from mergelab.engine.checkpoint import Checkpoint
from mergelab.engine.finite import FiniteCheck


class TensorStream:
    """Reads (base, experts) name by name, one name ahead of the consumer, on a background thread.

    Tensors are read as stored (bf16 checkpoints stay bf16), so the tensors read ahead cost half their
    float32 size; the consumer upcasts, whole or slice by slice (`mergelab.engine.blockwise`). With a
    `finite` check, each tensor is checked for NaN and inf the first time it is read, on the reader thread
    (the base only when `check_base`: methods that ignore the base's values do not care).
    """

    def __init__(
        self,
        base: Checkpoint,
        experts: Sequence[Checkpoint],
        device: torch.device,
        finite: FiniteCheck | None = None,
        check_base: bool = True,
    ) -> None:
        self.base = base
        self.experts = experts
        self.device = device
        self.finite = finite
        self.check_base = check_base

    def _read(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        base, experts = self.base.get(name), [expert.get(name) for expert in self.experts]
        if self.finite is not None:
            labelled = [(expert.label, tensor) for expert, tensor in zip(self.experts, experts)]
            self.finite.inputs(name, [(self.base.label, base)] * self.check_base + labelled)
        return base, experts

    def read(self, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        """(name, base, experts) in `names` order, as stored, on the CPU."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-read") as pool:
            ahead: deque[Future] = deque(pool.submit(self._read, name) for name in names[:1])
            for index, name in enumerate(names):
                if index + 1 < len(names):
                    ahead.append(pool.submit(self._read, names[index + 1]))
                # No local keeps the tensors: once the consumer drops them they are freed.
                yield (name, *ahead.popleft().result())

    def float32(self, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        """(name, base, experts) as whole float32 tensors on the compute device."""
        for name, base, experts in self.read(names):
            yield name, upcast(base, self.device), [upcast(expert, self.device) for expert in experts]

    def blocks(self, names: Sequence[str]) -> Iterator[tuple[str, TensorBlocks]]:
        """(name, its values as float32 slices on the compute device) in `names` order."""
        for name, base, experts in self.read(names):
            yield name, TensorBlocks(base, experts, self.device)
