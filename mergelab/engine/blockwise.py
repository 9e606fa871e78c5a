"""Merging a large tensor in slices of its flattened entries, so float32 work never holds whole tensors.

Inputs stay in their stored dtype; each slice of `block_entries` entries is upcast on the compute device,
merged and cast back into the result. This is exact for methods whose merged entry depends only on that
entry's values plus the trim context (`MergeMethod.elementwise`): magnitude trimming over the tensor is
recovered by running `MagnitudeSelector` over the slices, handing out the cut's ties in flattened order,
and summing the elected signs of all slices for the majority sign, exactly as over a whole model for
`trim_scope: global`. Results are bit-identical to merging the whole tensor at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from mergelab.methods import MergeMethod, TensorContext, TrimRule
from mergelab.methods.trim import MagnitudeSelector, keep_count, ties_taken


def upcast(tensor: Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """A copy in the compute dtype (float32 unless a merge asks for float64) on `device` that a method may
    overwrite."""
    return tensor.to(device=device, dtype=dtype, copy=True)


BLOCK_ENTRIES = 1 << 22  # 16 MiB per float32 slice: small next to the tensors worth slicing


class TensorBlocks:
    """A tensor's base and expert values (as stored), served as float32 slices on the compute device."""

    def __init__(
        self,
        base: Tensor,
        experts: Sequence[Tensor],
        device: torch.device,
        block_entries: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.base = base.reshape(-1)
        self.experts = [expert.reshape(-1) for expert in experts]
        self.device = device
        self.dtype = dtype
        entries = self.base.numel()
        block_entries = block_entries or BLOCK_ENTRIES
        self.spans = [
            slice(start, min(start + block_entries, entries)) for start in range(0, entries, block_entries)
        ]

    def values(self, span: slice) -> tuple[Tensor, list[Tensor]]:
        """(base, experts) of one slice in the compute dtype on the compute device."""
        return upcast(self.base[span], self.device, self.dtype), [
            upcast(expert[span], self.device, self.dtype) for expert in self.experts
        ]

    def magnitudes(self) -> Iterator[list[Tensor]]:
        """Per slice, in order: each expert's task-vector magnitudes."""
        for span in self.spans:
            base, experts = self.values(span)
            yield [expert.sub_(base).abs_() for expert in experts]


def slice_contexts(method: MergeMethod, blocks: TensorBlocks, context: TensorContext) -> list[TensorContext]:
    """One context per slice: the tensor's trim rules split over its slices, and the majority sign."""
    if not method.trims:
        return [context] * len(blocks.spans)
    rules = (
        _tensor_scope_rules(method, blocks) if context.trim is None else _split_rules(context.trim, blocks)
    )
    majority_sign = context.majority_sign
    if majority_sign is None:
        majority_sign = -1.0 if elected_sign_total(method, blocks, rules, context.name) < 0 else 1.0
    return [
        TensorContext(name=context.name, trim=slice_rules, majority_sign=majority_sign)
        for slice_rules in rules
    ]


def elected_sign_total(
    method: MergeMethod, blocks: TensorBlocks, rules: list[tuple[TrimRule, ...]], name: str
) -> float:
    """The sum over the tensor `name` of the elected signs before zero resolution, given each slice's rules."""
    return sum(
        method.elected_sign_total(*blocks.values(span), TensorContext(name=name, trim=slice_rules))
        for span, slice_rules in zip(blocks.spans, rules)
    )


def _tensor_scope_rules(method: MergeMethod, blocks: TensorBlocks) -> list[tuple[TrimRule, ...]]:
    """Each slice's rules for trimming every expert to exactly `int(density * n)` entries of the tensor."""
    n_entries = blocks.base.numel()
    selectors = [
        MagnitudeSelector(keep_count(n_entries, density))
        for density in method.expert_densities(len(blocks.experts))
    ]
    for _ in range(2):
        for magnitudes in blocks.magnitudes():
            for selector, magnitude in zip(selectors, magnitudes):
                selector.observe(magnitude)
        for selector in selectors:
            selector.next_pass()
    return [
        tuple(selector.rule_for(magnitude) for selector, magnitude in zip(selectors, magnitudes))
        for magnitudes in blocks.magnitudes()
    ]


def _split_rules(rules: tuple[TrimRule, ...], blocks: TensorBlocks) -> list[tuple[TrimRule, ...]]:
    """The tensor's rules (from a model-wide cut) with their ties handed to the slices in order."""
    ties_left = [rule.ties_to_keep for rule in rules]
    split = []
    for magnitudes in blocks.magnitudes():
        slice_rules = []
        for index, (rule, magnitude) in enumerate(zip(rules, magnitudes)):
            taken = ties_taken(magnitude, rule.threshold, ties_left[index])
            ties_left[index] -= taken
            slice_rules.append(TrimRule(threshold=rule.threshold, ties_to_keep=taken))
        split.append(tuple(slice_rules))
    return split


def merge_blockwise(
    method: MergeMethod,
    base: Tensor,
    experts: Sequence[Tensor],
    context: TensorContext,
    device: torch.device,
    block_entries: int | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The merged tensor in `out_dtype` (default: the base's dtype) on the CPU, computed slice by slice in
    `compute_dtype` on `device`."""
    blocks = TensorBlocks(base, experts, device, block_entries, compute_dtype)
    out_dtype = out_dtype or base.dtype
    result = torch.empty(base.numel(), dtype=out_dtype)
    for span, slice_context in zip(blocks.spans, slice_contexts(method, blocks, context)):
        merged = method.merge(*blocks.values(span), slice_context)
        result[span] = merged.to(device="cpu", dtype=out_dtype)
    return result.view(base.shape)
