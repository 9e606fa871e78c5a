"""The merge engine: streams tensors from checkpoints through a method on a device into sharded output.

Tensors are processed one at a time in sorted-name order (so results never depend on shard layout), read
one step ahead on a background thread and written behind on another, so reading, compute and writing
overlap while memory stays near (experts + 2) tensors. Methods that trim over the whole model get their
per-expert cuts and majority sign from streaming passes first (`mergelab.global_trim`).
"""

from __future__ import annotations

import ctypes
import functools
import resource
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mergelab.checkpoint import Checkpoint, CheckpointError, TensorInfo, check_compatible, is_float
from mergelab.global_trim import global_trim_contexts
from mergelab.methods import MergeMethod, TensorContext
from mergelab.output import CheckpointOutput


@functools.cache
def keep_freed_memory_for_reuse() -> None:
    """Ask glibc to serve large blocks from the heap and keep freed ones, instead of mmap/munmap per tensor.

    Each merge step allocates and frees tensors of the same sizes; with glibc's defaults every one is a fresh
    mapping whose pages fault in on first touch, which costs more than the arithmetic. Peak memory is the
    same; freed blocks are simply reused. No effect off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_max, m_trim_threshold = -4, -1
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def resolve_device(device: str) -> torch.device:
    """`auto` is cuda when available, else cpu; `cuda` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device={device} requested but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise CheckpointError(f"device={device!r} is not one of ['auto', 'cpu', 'cuda']")
    return torch.device(device)


@dataclass(frozen=True)
class MergeReport:
    """What one merge did, for the summary line and result rows."""

    tensors: int
    bytes_written: int
    seconds: float
    peak_rss_bytes: int
    peak_device_bytes: int
    device: str
    out: Path | None

    def summary(self) -> str:
        line = (
            f"merged {self.tensors} tensors ({self.bytes_written / 2**20:.1f} MiB) in {self.seconds:.2f} s "
            f"on {self.device}; peak RSS {self.peak_rss_bytes / 2**30:.2f} GiB"
        )
        if self.peak_device_bytes:
            line += f", peak GPU memory {self.peak_device_bytes / 2**30:.2f} GiB"
        return line + (f" -> {self.out}" if self.out else "")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TensorStream:
    """Reads (base, experts) for each name, one step ahead of the consumer, upcast to fp32 on `device`."""

    def __init__(self, base: Checkpoint, experts: Sequence[Checkpoint], device: torch.device) -> None:
        self.base = base
        self.experts = experts
        self.device = device

    def _read(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.base.get(name), [expert.get(name) for expert in self.experts]

    def raw(self, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        """(name, base, experts) in their stored dtypes, prefetching the next name while one is used."""
        if not names:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-read") as pool:
            pending = pool.submit(self._read, names[0])
            for index, name in enumerate(names):
                base, experts = pending.result()
                if index + 1 < len(names):
                    pending = pool.submit(self._read, names[index + 1])
                yield name, base, experts

    def float32(self, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        """(name, base, experts) as float32 tensors on the compute device."""
        for name, base, experts in self.raw(names):
            yield name, self.upcast(base), [self.upcast(expert) for expert in experts]

    def upcast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=torch.float32, non_blocking=True)


def merge_checkpoints(
    base: Checkpoint,
    experts: Sequence[Checkpoint],
    method: MergeMethod,
    *,
    device: str = "auto",
    output: CheckpointOutput | None = None,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor] | None, MergeReport]:
    """Merge `experts` into `base` with `method`; write through `output`, or return a state dict."""
    if not experts:
        raise CheckpointError("at least one expert is needed to merge")
    compute_device = resolve_device(device)
    keep_freed_memory_for_reuse()
    infos = check_compatible(base, experts)
    names = sorted(infos)
    float_names = [name for name in names if is_float(infos[name].dtype)]
    started = time.perf_counter()
    if compute_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(compute_device)
    stream = TensorStream(base, experts, compute_device)
    contexts = (
        global_trim_contexts(stream, float_names, method, progress)
        if method.needs_global_trim
        else {name: TensorContext(name=name) for name in float_names}
    )
    merged = _merge_pass(stream, names, infos, method, contexts, output, progress)
    peak_device = torch.cuda.max_memory_allocated(compute_device) if compute_device.type == "cuda" else 0
    report = MergeReport(
        tensors=len(names),
        bytes_written=output.bytes_written if output else 0,
        seconds=time.perf_counter() - started,
        peak_rss_bytes=peak_rss_bytes(),
        peak_device_bytes=peak_device,
        device=str(compute_device),
        out=output.final_path if output else None,
    )
    return merged, report


def _merge_pass(
    stream: TensorStream,
    names: list[str],
    infos: dict[str, TensorInfo],
    method: MergeMethod,
    contexts: dict[str, TensorContext],
    output: CheckpointOutput | None,
    progress: bool,
) -> dict[str, torch.Tensor] | None:
    state_dict: dict[str, torch.Tensor] | None = None if output else {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-write") as writer:
        pending: list[Future] = []
        for name, base, experts in tqdm(
            stream.raw(names), total=len(names), desc="merge", disable=not progress
        ):
            if name in contexts:
                merged = method.merge(
                    stream.upcast(base), [stream.upcast(e) for e in experts], contexts[name]
                )
                result = merged.to(device="cpu", dtype=infos[name].dtype)
            else:
                result = base  # non-float tensors and buffers are copied from the base
            del experts
            if state_dict is not None:
                state_dict[name] = result
                continue
            while len(pending) >= 2:
                pending.pop(0).result()
            pending.append(writer.submit(output.write, name, result))
        for future in pending:
            future.result()
    return state_dict
