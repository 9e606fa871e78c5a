"""Model-wide trim facts (`trim_scope: global`) from the fused kernels: the same contexts as
`mergelab.engine.global_trim`, each pass one read of every tensor as stored, split over the kernel threads.

Pass 1 and 2 feed coarse and fine magnitude histograms to one `MagnitudeSelector` per expert. Pass 3 hands
out the cut's ties in canonical order and sums the elected signs; it counts ties only in tensors where an
expert's remaining tie budget is neither zero nor enough for all the ties left in the model. A tensor that
keeps all of its ties gets `ties_to_keep` equal to its size (which keeps them all, in either path), so the
merge pass need not count them again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from mergelab.engine import kernels
from mergelab.engine.fused import (
    KERNEL_DTYPES,
    FusedInputs,
    KernelPool,
    chunk_tie_counts,
    observe_histograms,
    split_ties,
    supports,
    ties_params,
)
from mergelab.engine.stream import TensorStream
from mergelab.methods import MergeMethod, TensorContext, TrimRule
from mergelab.methods.trim import MagnitudeSelector, keep_count


def fused_global_trim_contexts(
    stream: TensorStream, names: Sequence[str], method: MergeMethod, pool: KernelPool, progress: bool
) -> dict[str, TensorContext] | None:
    """Per-tensor contexts with each expert's `TrimRule` and the model-wide majority sign, or None when
    some tensor's dtypes are outside the kernels (the caller then runs the reference passes)."""
    if not supports(method) or not _all_supported(stream, names):
        return None
    infos = stream.base.infos()
    n_entries = sum(math.prod(infos[name].shape) for name in names)
    selectors = [MagnitudeSelector(keep_count(n_entries, method.density)) for _ in stream.experts]
    for pass_name in ("trim: coarse histogram", "trim: fine histogram"):
        with tqdm(total=len(names), desc=pass_name, disable=not progress) as bar:
            for _, base, experts in stream.read(names):
                observe_histograms(FusedInputs.of(base, experts), selectors, pool)
                del base, experts
                bar.update()
        for selector in selectors:
            selector.next_pass()
    budget = TieBudget(selectors)
    contexts: dict[str, TensorContext] = {}
    sign_total = 0
    with tqdm(total=len(names), desc="trim: sign", disable=not progress) as bar:
        for name, base, experts in stream.read(names):
            inputs = FusedInputs.of(base, experts)
            rules = budget.rules_for(inputs, pool)
            contexts[name] = TensorContext(name=name, trim=rules)
            sign_total += elected_sign_total(method, inputs, rules, pool)
            del base, experts, inputs
            bar.update()
    majority_sign = -1.0 if sign_total < 0 else 1.0
    return {
        name: TensorContext(name=name, trim=context.trim, majority_sign=majority_sign)
        for name, context in contexts.items()
    }


def _all_supported(stream: TensorStream, names: Sequence[str]) -> bool:
    """Every tensor's base and experts are stored in a dtype the kernels read, the experts in one dtype."""
    base_infos = stream.base.infos()
    expert_infos = [expert.infos() for expert in stream.experts]
    for name in names:
        dtypes = {infos[name].dtype for infos in expert_infos}
        if len(dtypes) != 1 or not {base_infos[name].dtype, *dtypes} <= set(KERNEL_DTYPES):
            return False
    return True


class TieBudget:
    """Each expert's ties at the model-wide cut still to hand out, and how many remain in the model."""

    def __init__(self, selectors: Sequence[MagnitudeSelector]) -> None:
        self.thresholds = [selector.result()[0] for selector in selectors]
        self.left = [selector.ties_left() for selector in selectors]
        self.remaining = [selector.tie_count() for selector in selectors]

    def rules_for(self, inputs: FusedInputs, pool: KernelPool) -> tuple[TrimRule, ...]:
        """The next tensor's rules (canonical order): its ties kept first-come until the budget is spent."""
        partial = [index for index, left in enumerate(self.left) if 0 < left < self.remaining[index]]
        counts = chunk_tie_counts(inputs, self.thresholds, pool).sum(axis=0) if partial else None
        rules = []
        for index, threshold in enumerate(self.thresholds):
            if index not in partial:
                keeps_all = self.left[index] > 0
                rules.append(TrimRule(threshold=threshold, ties_to_keep=inputs.size if keeps_all else 0))
                continue
            tied = int(counts[index])
            taken = min(tied, self.left[index])
            self.left[index] -= taken
            self.remaining[index] -= tied
            rules.append(TrimRule(threshold=threshold, ties_to_keep=inputs.size if taken == tied else taken))
        return tuple(rules)


def elected_sign_total(
    method: MergeMethod, inputs: FusedInputs, rules: Sequence[TrimRule], pool: KernelPool
) -> int:
    """The sum over one tensor of the elected signs before zero resolution, given its rules."""
    thresholds = np.array([rule.threshold for rule in rules], np.float32)
    params = ties_params(method, len(inputs.experts))
    empty_out = np.empty(0, inputs.base.dtype)
    no_index, no_value = np.empty(0, np.int64), np.empty(0, np.float32)

    def chunk_total(span: slice, ties_to_keep: np.ndarray) -> int:
        total, _ = kernels.ties_slice(
            *inputs.at(span),
            thresholds,
            ties_to_keep,
            *params,
            np.float32(1.0),
            empty_out,
            no_index,
            no_value,
        )
        return total

    return sum(pool.map(chunk_total, inputs.spans, split_ties(inputs, rules, None, pool)))
