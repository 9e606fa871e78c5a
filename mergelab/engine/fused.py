"""Merging one tensor with the fused kernels (`mergelab.engine.kernels`), chunk by chunk on a thread pool.

The reference path (`kernel: reference`) upcasts float32 copies of every slice and runs the method's torch
code, about ten passes over memory. Here each step is one pass over the stored inputs, split into chunks
that the threads of a `KernelPool` run at once, and the output is written in its dtype directly:

- task arithmetic, average, DARE `linear`: one pass;
- TIES, tensor scope: a coarse and a fine magnitude histogram pass find each expert's exact cut, then one
  merge pass (entries whose zero vote needs the tensor's majority sign, known only at the end of the pass,
  are computed for both signs and patched); the cut's ties are counted per chunk only when an expert keeps
  some but not all of them;
- TIES, global scope: the model-wide passes of `fused_global_trim_contexts`, then one merge pass;
- DARE: the keep masks of torch's generator (`torch.rand(shape) < density`, seeded per (seed, expert,
  tensor name)) are reproduced by a kernel, one expert per thread, as packed bits; then one merge pass.

Results are bit-identical to the reference path on the CPU (tests/test_fused.py). `fused_merge` returns None
for what it does not cover (other methods, dtypes other than float32/bfloat16/float16, experts of mixed
dtypes), and the engine then takes the reference path; it also does for merges with `allow_nonfinite`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from mergelab.engine import kernels
from mergelab.methods import MergeMethod, TensorContext, TrimRule
from mergelab.methods.average import Average
from mergelab.methods.dare import Dare, mask_seed
from mergelab.methods.task_arithmetic import TaskArithmetic
from mergelab.methods.ties import Ties
from mergelab.methods.trim import HIGH_BINS, LOW_BINS, MagnitudeSelector, keep_count

CHUNK_ENTRIES = 1 << 18  # 256k entries: with 4 bf16 experts, 2.5 MiB of inputs per chunk, cache-sized
_STORED = {torch.float32: None, torch.bfloat16: np.uint16, torch.float16: np.int16}
KERNEL_DTYPES = tuple(_STORED)
_SIGN_RULES = {"sum": kernels.SIGN_SUM, "count": kernels.SIGN_COUNT}
_AGGREGATIONS = {"mean": kernels.AGG_MEAN, "sum": kernels.AGG_SUM, "mean_all": kernels.AGG_MEAN_ALL}
_ALL_TIES = np.iinfo(np.int64).max

Result = TypeVar("Result")


class KernelPool:
    """Threads that run kernels on chunks at once (the kernels release the GIL); one thread runs inline."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mergelab-kernel")
            if threads > 1
            else None
        )

    def map(self, function: Callable[..., Result], *iterables) -> list[Result]:
        if self._executor is None:
            return list(map(function, *iterables))
        return list(self._executor.map(function, *iterables))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def supports(method: MergeMethod) -> bool:
    """True when the fused kernels implement `method` (exact classes: a subclass may change the math) with
    one density for every expert (a per-expert density list takes the reference path)."""
    per_expert_density = isinstance(getattr(method.params, "density", None), (list, tuple))
    return type(method) in (Ties, Dare, TaskArithmetic, Average) and not per_expert_density


def stored_array(tensor: Tensor, writable: bool = False) -> np.ndarray | None:
    """A flat numpy view of a CPU tensor in the kernels' representation (read-only unless `writable`:
    one array type for every input, so the experts form one tuple type), or None for other dtypes."""
    if tensor.dtype not in _STORED or tensor.device.type != "cpu":
        return None
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    view_as = _STORED[tensor.dtype]
    array = flat.numpy() if view_as is None else flat.view(torch.int16).numpy().view(view_as)
    array = array.view()
    array.setflags(write=writable)
    return array


def fused_merge(
    method: MergeMethod,
    base: Tensor,
    experts: Sequence[Tensor],
    context: TensorContext,
    pool: KernelPool,
    out_dtype: torch.dtype | None = None,
) -> Tensor | None:
    """The merged tensor in `out_dtype` (default: the base's) on the CPU, or None when not covered."""
    out_dtype = out_dtype or base.dtype
    if not supports(method) or out_dtype not in _STORED or len({e.dtype for e in experts}) != 1:
        return None
    inputs = FusedInputs.of(base, experts)
    if inputs is None:
        return None
    result = torch.empty(base.shape, dtype=out_dtype)
    out = stored_array(result, writable=True)
    weights = np.array(method.expert_weights(len(experts)), dtype=np.float32)
    if isinstance(method, TaskArithmetic):
        scale = np.float32(method.params.scale)
        pool.map(
            lambda span: kernels.task_arithmetic_slice(*inputs.at(span), weights, scale, out[span]),
            inputs.spans,
        )
    elif isinstance(method, Average):
        total = sum(method.expert_weights(len(experts)))
        normalized = np.array([weight / total for weight in method.expert_weights(len(experts))], np.float32)
        pool.map(lambda span: kernels.average_slice(inputs.at(span)[1], normalized, out[span]), inputs.spans)
    elif isinstance(method, Ties):
        _ties(method, inputs, context, pool, out)
    else:
        _dare(method, inputs, context.name, weights, pool, out)
    return result


class FusedInputs:
    """A tensor's base and experts as stored arrays, and the chunks the pool splits them into."""

    def __init__(self, base: np.ndarray, experts: tuple[np.ndarray, ...]) -> None:
        self.base = base
        self.experts = experts
        self.size = base.size
        self.spans = [
            slice(start, min(start + CHUNK_ENTRIES, self.size))
            for start in range(0, self.size, CHUNK_ENTRIES)
        ] or [slice(0, 0)]

    @classmethod
    def of(cls, base: Tensor, experts: Sequence[Tensor]) -> FusedInputs | None:
        arrays = [stored_array(tensor) for tensor in (base, *experts)]
        if any(array is None for array in arrays):
            return None
        return cls(arrays[0], tuple(arrays[1:]))

    def at(self, span: slice) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        return self.base[span], tuple(expert[span] for expert in self.experts)


# --- TIES


def _ties(
    method: Ties,
    inputs: FusedInputs,
    context: TensorContext,
    pool: KernelPool,
    out: np.ndarray,
) -> None:
    if context.trim is None:
        rules, tie_totals = tensor_trim(inputs, method.density, pool)
    else:
        rules, tie_totals = context.trim, None
    chunk_rules = split_ties(inputs, rules, tie_totals, pool)
    thresholds = np.array([rule.threshold for rule in rules], np.float32)
    params = ties_params(method, len(inputs.experts))
    deferred = context.majority_sign is None and method.params.elect
    majority = 1.0 if context.majority_sign is None else context.majority_sign
    majority = np.float32(majority if majority != 0 else 1.0)

    def merge_chunk(span: slice, ties_to_keep: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        length = span.stop - span.start if deferred else 0
        other_index, other_value = np.empty(length, np.int64), np.empty(length, np.float32)
        sign_total, n_other = kernels.ties_slice(
            *inputs.at(span), thresholds, ties_to_keep, *params, majority, out[span], other_index, other_value
        )
        return sign_total, other_index[:n_other] + span.start, other_value[:n_other].copy()

    results = pool.map(merge_chunk, inputs.spans, chunk_rules)
    if deferred and sum(total for total, _, _ in results) < 0:  # the majority is -1: patch its zero votes
        for _, indices, values in results:
            kernels.store_entries(out, indices, values)


def ties_params(method: Ties, n_experts: int) -> tuple:
    """`kernels.ties_slice`'s method arguments: weights, scale, sign rule, elect, aggregation, and the
    `mean_all` divisor, each rounded to float32 as the reference's torch ops round them."""
    params = method.params
    weights = method.expert_weights(n_experts)
    return (
        np.array(weights, np.float32),
        np.float32(params.scale),
        _SIGN_RULES[params.sign],
        params.elect,
        _AGGREGATIONS[params.agg],
        np.float32(sum(weights)),
    )


def tensor_trim(
    inputs: FusedInputs, density: float, pool: KernelPool
) -> tuple[tuple[TrimRule, ...], list[int]]:
    """Each expert's rule keeping exactly `int(density * n)` of this tensor's magnitudes, and how many of
    its magnitudes equal the cut."""
    selectors = [MagnitudeSelector(keep_count(inputs.size, density)) for _ in inputs.experts]
    for _ in range(2):
        observe_histograms(inputs, selectors, pool)
        for selector in selectors:
            selector.next_pass()
    rules = tuple(selector.take_ties(selector.ties_left()) for selector in selectors)
    return rules, [selector.tie_count() for selector in selectors]


def observe_histograms(inputs: FusedInputs, selectors: Sequence[MagnitudeSelector], pool: KernelPool) -> None:
    """Feed one tensor's magnitude histograms for the selectors' current pass: coarse (pass 1) or fine
    inside each selector's cut bin (pass 2)."""
    if all(selector.done for selector in selectors):
        return
    coarse = selectors[0].pass_index == 0
    cut_high = np.array([selector.cut_high for selector in selectors], np.int64)

    def histogram(spans: list[slice]) -> np.ndarray:
        counts = np.zeros((len(selectors), HIGH_BINS if coarse else LOW_BINS), np.int64)
        for span in spans:
            if coarse:
                kernels.high_histograms(*inputs.at(span), counts)
            else:
                kernels.low_histograms(*inputs.at(span), cut_high, counts)
        return counts

    # One histogram per thread, not per chunk: counts do not depend on order, and zeroing and summing
    # (experts x 65536) bins per chunk would cost as much as counting a chunk.
    per_thread = [
        inputs.spans[index :: pool.threads] for index in range(min(pool.threads, len(inputs.spans)))
    ]
    counts = sum(pool.map(histogram, per_thread))
    for selector, row in zip(selectors, counts):
        selector.add_counts(row)


def split_ties(
    inputs: FusedInputs,
    rules: Sequence[TrimRule],
    tie_totals: Sequence[int] | None,
    pool: KernelPool,
) -> list[np.ndarray]:
    """Per chunk, how many ties at the cut each expert keeps there: the tensor's `ties_to_keep` handed to
    the chunks in flattened order. Counting is skipped when an expert keeps none or all of its ties
    (`tie_totals`, when known, or `ties_to_keep` at least the tensor's size)."""
    n_chunks = len(inputs.spans)
    per_chunk = np.zeros((n_chunks, len(rules)), np.int64)
    to_count = []
    for index, rule in enumerate(rules):
        keeps_all = rule.ties_to_keep >= inputs.size or (
            tie_totals is not None and rule.ties_to_keep >= tie_totals[index]
        )
        if keeps_all:
            per_chunk[:, index] = _ALL_TIES
        elif rule.ties_to_keep > 0:
            to_count.append(index)
    if to_count:
        counts = chunk_tie_counts(inputs, [rule.threshold for rule in rules], pool)
        for index in to_count:
            left = rules[index].ties_to_keep
            for chunk in range(n_chunks):
                taken = min(int(counts[chunk, index]), left)
                per_chunk[chunk, index] = taken
                left -= taken
    return list(per_chunk)


def chunk_tie_counts(inputs: FusedInputs, thresholds: Sequence[float], pool: KernelPool) -> np.ndarray:
    """(chunks x experts) counts of magnitudes equal to each expert's threshold."""
    values = np.array(thresholds, np.float32)

    def count(span: slice) -> np.ndarray:
        counts = np.zeros(len(values), np.int64)
        kernels.tie_counts(*inputs.at(span), values, counts)
        return counts

    return np.stack(pool.map(count, inputs.spans))


# --- DARE


def _dare(
    method: Dare, inputs: FusedInputs, name: str, weights: np.ndarray, pool: KernelPool, out: np.ndarray
) -> None:
    params = method.params
    dropping = params.density != 1.0
    density = np.float32(params.density)
    keep_bits = np.zeros((len(inputs.experts), (inputs.size + 7) // 8 if dropping else 1), np.uint8)
    if dropping:
        keep_below = math.ceil(float(density) * 2**24)
        pool.map(
            lambda index: kernels.dare_keep_bits(
                mask_seed(params.seed, index, name), inputs.size, keep_below, keep_bits[index]
            ),
            range(len(inputs.experts)),
        )
    scale = np.float32(params.scale)
    if params.combine == "linear":
        pool.map(
            lambda span: kernels.dare_linear_slice(
                *inputs.at(span), keep_bits, span.start, density, dropping, weights, scale, out[span]
            ),
            inputs.spans,
        )
        return

    def merge_chunk(span: slice) -> tuple[int, np.ndarray, np.ndarray]:
        length = span.stop - span.start
        other_index, other_value = np.empty(length, np.int64), np.empty(length, np.float32)
        sign_total, n_other = kernels.dare_ties_slice(
            *inputs.at(span),
            keep_bits,
            span.start,
            density,
            dropping,
            weights,
            scale,
            np.float32(1.0),
            out[span],
            other_index,
            other_value,
        )
        return sign_total, other_index[:n_other] + span.start, other_value[:n_other].copy()

    results = pool.map(merge_chunk, inputs.spans)
    if sum(total for total, _, _ in results) < 0:
        for _, indices, values in results:
            kernels.store_entries(out, indices, values)
