"""Merging on a CUDA device with transfers overlapped with compute: pinned host buffers and a copy stream.

`merge_pipelined` merges a tensor slice by slice, as `mergelab.engine.blockwise.merge_blockwise` does, but
while slice s computes, slice s + 1 is already on its way to the device: copied, in its stored dtype (half
the bytes of float32 for bf16), from a pinned host buffer on a side stream; results come back into a pinned
host buffer without blocking, and the host waits once, at the end of the tensor. On the CPU the same code
runs with no stream and no copies (each slice is upcast where it lies), which is how its semantics, equal
to `merge_blockwise`'s, are tested without a GPU. The trim passes of tensor-scope TIES before the merge
(`slice_contexts`) still upcast each slice with a plain copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.engine.blockwise import TensorBlocks, slice_contexts, upcast
from mergelab.methods import MergeMethod, TensorContext


@dataclass
class Staged:
    """A slice's base and expert values on their way to the compute device, and the event that says they
    arrived (None on the CPU)."""

    tensors: list[Tensor]
    ready: torch.cuda.Event | None


class SliceStager:
    """Moves stored slices to the compute device ahead of use and results back (CUDA), or passes them
    through (CPU)."""

    def __init__(self, device: torch.device, compute_dtype: torch.dtype = torch.float32) -> None:
        self.device = device
        self.compute_dtype = compute_dtype
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def stage(self, tensors: Sequence[Tensor]) -> Staged:
        """Start moving `tensors` (CPU, stored dtype) to the device; returns at once."""
        if self.stream is None:
            return Staged(list(tensors), None)
        with torch.cuda.stream(self.stream):
            moved = [tensor.pin_memory().to(self.device, non_blocking=True) for tensor in tensors]
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return Staged(moved, ready)

    def values(self, staged: Staged) -> list[Tensor]:
        """The staged tensors as copies in the compute dtype on the device, ordered after their transfer."""
        if staged.ready is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(staged.ready)
            for tensor in staged.tensors:
                tensor.record_stream(compute)  # the copy stream's memory is in use on the compute stream
        return [upcast(tensor, self.device, self.compute_dtype) for tensor in staged.tensors]

    def result_buffer(self, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """Host memory for a merged tensor: pinned on CUDA, so copies into it do not block."""
        return torch.empty(shape, dtype=dtype, pin_memory=self.stream is not None)

    def copy_back(self, merged: Tensor, destination: Tensor) -> None:
        """Cast `merged` to the destination's dtype on the device and copy it to the host."""
        destination.copy_(merged.to(destination.dtype), non_blocking=self.stream is not None)

    def finish(self) -> None:
        """Wait until every result copied back has arrived."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).synchronize()


def merge_pipelined(
    method: MergeMethod,
    base: Tensor,
    experts: Sequence[Tensor],
    context: TensorContext,
    stager: SliceStager,
    block_entries: int | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The merged tensor in `out_dtype` (default: the base's) on the CPU, computed in the stager's compute
    dtype: slice by slice for an elementwise method, whole (shape kept) otherwise, each step's transfer
    started before the previous step computes."""
    out_dtype = out_dtype or base.dtype
    if not method.elementwise:
        result = stager.result_buffer(base.shape, out_dtype)
        values = stager.values(stager.stage([base, *experts]))
        stager.copy_back(method.merge(values[0], values[1:], context), result)
        stager.finish()
        return result
    blocks = TensorBlocks(base, experts, stager.device, block_entries, stager.compute_dtype)
    result = stager.result_buffer(torch.Size([base.numel()]), out_dtype)
    spans = blocks.spans
    if not spans:
        return result.view(base.shape)
    staged = stager.stage([blocks.base[spans[0]], *(expert[spans[0]] for expert in blocks.experts)])
    for index, slice_context in enumerate(slice_contexts(method, blocks, context)):
        upcoming = None
        if index + 1 < len(spans):
            span = spans[index + 1]
            upcoming = stager.stage([blocks.base[span], *(expert[span] for expert in blocks.experts)])
        values = stager.values(staged)
        stager.copy_back(method.merge(values[0], values[1:], slice_context), result[spans[index]])
        staged = upcoming
    stager.finish()
    return result.view(base.shape)
