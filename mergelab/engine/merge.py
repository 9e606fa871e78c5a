"""The merge engine: streams tensors from checkpoints through a method on a device into sharded output.

Tensors are processed one at a time in sorted-name order (so results never depend on shard layout), read
one step ahead on a background thread and written behind on another, so reading, compute and writing
overlap while memory stays near (experts + 2) tensors. Methods that trim over the whole model get their
per-expert cuts and majority sign from streaming passes first (`mergelab.engine.global_trim`).
On the CPU, task arithmetic, average, TIES and DARE run as fused kernels on `threads` threads
(`kernel: fused`, `mergelab.engine.fused`); `kernel: reference` runs the methods' torch code, which the
fused kernels equal bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from mergelab.engine import blockwise
from mergelab.engine.blockwise import merge_blockwise, upcast
from mergelab.engine.checkpoint import Checkpoint, CheckpointError, TensorInfo, check_compatible, is_float
from mergelab.engine.device import peak_rss_bytes, resolve_device, resolve_threads, torch_threads
from mergelab.engine.finite import FiniteCheck
from mergelab.engine.fused import KernelPool, fused_merge
from mergelab.engine.fused_global import fused_global_trim_contexts
from mergelab.engine.global_trim import global_trim_contexts
from mergelab.engine.output import CheckpointOutput
from mergelab.engine.pipeline import SliceStager, merge_pipelined
from mergelab.engine.precision import DEFAULT_PRECISION, Precision
from mergelab.engine.stream import TensorStream
from mergelab.methods import MergeConfigError, MergeMethod, TensorContext


class ExpertStatistic(Protocol):
    """One expert's per-tensor statistic for a data-aware method (`mergelab.stats.StatisticFile`)."""

    @property
    def norm(self) -> float: ...

    def get(self, name: str) -> torch.Tensor | None: ...


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
    nonfinite_entries: int = 0  # NaN or inf entries in the merged tensors (only with allow_nonfinite)

    def summary(self) -> str:
        line = (
            f"merged {self.tensors} tensors ({self.bytes_written / 2**20:.1f} MiB) in {self.seconds:.2f} s "
            f"on {self.device}; peak RSS {self.peak_rss_bytes / 2**30:.2f} GiB"
        )
        if self.peak_device_bytes:
            line += f", peak GPU memory {self.peak_device_bytes / 2**30:.2f} GiB"
        if self.nonfinite_entries:
            line += f"; {self.nonfinite_entries} non-finite merged values (allow_nonfinite)"
        return line + (f" -> {self.out}" if self.out else "")


KERNELS = ("fused", "reference")


def check_inputs(
    base: Checkpoint, experts: Sequence[Checkpoint], method: MergeMethod, device: str
) -> tuple[dict[str, TensorInfo], torch.device]:
    """Everything that can be checked before a byte is written: the expert count, the device, tensor names,
    shapes and float-ness, and method options that depend on the experts (one weight per expert).

    Returns the base's tensor infos and the compute device.
    """
    if not experts:
        raise CheckpointError("at least one expert is needed to merge")
    compute_device = resolve_device(device)
    infos = check_compatible(base, experts)
    method.expert_weights(len(experts))
    return infos, compute_device


def merge_checkpoints(
    base: Checkpoint,
    experts: Sequence[Checkpoint],
    method: MergeMethod,
    *,
    device: str = "auto",
    output: CheckpointOutput | None = None,
    progress: bool = True,
    statistics: Sequence[ExpertStatistic] | None = None,
    allow_nonfinite: bool = False,
    precision: Precision = DEFAULT_PRECISION,
    kernel: str = "fused",
    threads: int | None = None,
    tensor_methods: Mapping[str, MergeMethod] | None = None,
) -> tuple[dict[str, torch.Tensor] | None, MergeReport]:
    """Merge `experts` into `base` with `method`; write through `output`, or return a state dict.

    A method with a `statistic` needs `statistics`, one per expert: each tensor's entries reach the method
    in `TensorContext.statistics`, read one tensor at a time. NaN or inf in an input or a merged tensor is
    a `NonFiniteError` naming checkpoint, tensor and count, unless `allow_nonfinite` (then a warning).
    `precision` gives the compute dtype and the dtype merged float tensors are returned or written in.
    `kernel` is `fused` (the CPU kernels where they cover the method and dtypes) or `reference`; `threads`
    (default: torch's thread count, which follows OMP_NUM_THREADS) is how many threads the fused kernels
    and, meanwhile, torch's own CPU ops use. `tensor_methods` merges the tensors it names with their own
    instance of the method (per-tensor hyperparameters, e.g. mergekit's layer gradients).
    """
    infos, compute_device = check_inputs(base, experts, method, device)
    if kernel not in KERNELS:
        raise CheckpointError(f"kernel={kernel!r} is not one of {list(KERNELS)}")
    threads = resolve_threads(threads)
    tensor_methods = tensor_methods or {}
    if tensor_methods and method.needs_global_trim:
        raise MergeConfigError(
            f"method '{method.name}' trims over the whole model: it takes no per-tensor options"
        )
    if method.statistic is not None and (statistics is None or len(statistics) != len(experts)):
        given = "none" if statistics is None else len(statistics)
        raise CheckpointError(
            f"method '{method.name}' needs one {method.statistic} statistic per expert "
            f"({len(experts)}), got {given}"
        )
    names = sorted(infos)
    float_names = [name for name in names if is_float(infos[name].dtype)]
    started = time.perf_counter()
    if compute_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(compute_device)
    finite = FiniteCheck(allow_nonfinite)
    stream = TensorStream(base, experts, compute_device, finite, check_base=method.uses_base)
    # NaN and inf propagate through the fused kernels differently from torch's ops (the sign of a NaN vote,
    # a NaN weight total), so merges that let them in take the reference path.
    fused = kernel == "fused" and compute_device.type == "cpu" and not allow_nonfinite
    with torch_threads(threads), KernelPool(threads if fused else 1) as pool:
        contexts = {name: TensorContext(name=name) for name in float_names}
        if method.needs_global_trim:
            model_wide = (
                fused_global_trim_contexts(stream, float_names, method, pool, progress) if fused else None
            )
            contexts = model_wide or global_trim_contexts(stream, float_names, method, progress)
        merged = _merge_pass(
            stream,
            names,
            infos,
            method,
            contexts,
            output,
            progress,
            statistics,
            finite,
            precision,
            pool if fused else None,
            tensor_methods,
        )
    peak_device = torch.cuda.max_memory_allocated(compute_device) if compute_device.type == "cuda" else 0
    report = MergeReport(
        tensors=len(names),
        bytes_written=output.bytes_written if output else 0,
        seconds=time.perf_counter() - started,
        peak_rss_bytes=peak_rss_bytes(),
        peak_device_bytes=peak_device,
        device=str(compute_device),
        out=output.final_path if output else None,
        nonfinite_entries=finite.merged_nonfinite,
    )
    return merged, report


def _with_statistics(
    context: TensorContext,
    statistics: Sequence[ExpertStatistic] | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> TensorContext:
    """`context` plus the experts' statistics of its tensor (in the compute dtype on the device), read just
    now."""
    if not statistics:
        return context
    values = [statistic.get(context.name) for statistic in statistics]
    return dataclasses.replace(
        context,
        statistics=tuple(None if value is None else upcast(value, device, dtype) for value in values),
        statistic_norms=tuple(statistic.norm for statistic in statistics),
    )


def merge_tensor(
    method: MergeMethod,
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    context: TensorContext,
    device: torch.device,
    precision: Precision = DEFAULT_PRECISION,
    pool: KernelPool | None = None,
) -> torch.Tensor:
    """One float tensor merged in the compute dtype (float32 by default) on `device`, returned on the CPU in
    the output dtype (by default the base's).

    With a `pool` (CPU only) the fused kernels merge it on the pool's threads when they cover the method,
    the dtypes and float32 compute. On CUDA, transfers overlap compute (`mergelab.engine.pipeline`).
    Otherwise tensors larger than a slice are merged slice by slice when the method allows it, so the
    working set stays a few slices in size.
    """
    out_dtype = precision.output_dtype(base.dtype)
    if pool is not None and not context.statistics and precision.compute == torch.float32:
        merged = fused_merge(method, base, experts, context, pool, out_dtype)
        if merged is not None:
            return merged
    if device.type == "cuda":
        stager = SliceStager(device, precision.compute)
        return merge_pipelined(method, base, experts, context, stager, out_dtype=out_dtype)
    if method.elementwise and base.numel() > blockwise.BLOCK_ENTRIES:
        return merge_blockwise(
            method, base, experts, context, device, compute_dtype=precision.compute, out_dtype=out_dtype
        )
    merged = method.merge(
        upcast(base, device, precision.compute),
        [upcast(expert, device, precision.compute) for expert in experts],
        context,
    )
    return merged.to(device="cpu", dtype=out_dtype)


def _merge_pass(
    stream: TensorStream,
    names: list[str],
    infos: dict[str, TensorInfo],
    method: MergeMethod,
    contexts: dict[str, TensorContext],
    output: CheckpointOutput | None,
    progress: bool,
    statistics: Sequence[ExpertStatistic] | None = None,
    finite: FiniteCheck | None = None,
    precision: Precision = DEFAULT_PRECISION,
    pool: KernelPool | None = None,
    tensor_methods: Mapping[str, MergeMethod] | None = None,
) -> dict[str, torch.Tensor] | None:
    state_dict: dict[str, torch.Tensor] | None = None if output else {}
    # The bar is updated by hand: wrapping the stream in tqdm would keep each item alive one step longer.
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergelab-write") as writer,
        tqdm(total=len(names), desc="merge", disable=not progress) as bar,
    ):
        pending: list[Future] = []
        for name, base, experts in stream.read(names):
            bar.update()
            if name in contexts:
                context = _with_statistics(contexts[name], statistics, stream.device, precision.compute)
                tensor_method = tensor_methods.get(name, method) if tensor_methods else method
                result = merge_tensor(tensor_method, base, experts, context, stream.device, precision, pool)
                if finite is not None:
                    finite.merged(name, result, method.name)
                del context
            else:
                result = base  # non-float tensors and buffers are copied from the base
            del base, experts
            if state_dict is not None:
                state_dict[name] = result
                continue
            while len(pending) >= 2:
                pending.pop(0).result()
            pending.append(writer.submit(output.write, name, result))
        for future in pending:
            future.result()
    return state_dict
