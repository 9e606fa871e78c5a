"""Model-wide trimming facts for methods with `trim_scope: global`, computed in streaming passes.

Two passes find each expert's exact magnitude cut with `MagnitudeSelector`; a third hands out the cut's ties
in canonical order and sums the elected signs, whose sign is the majority that zero votes take. No pass
holds more than one tensor of each checkpoint (as stored) plus float32 slices of it.
"""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from mergelab.engine.blockwise import elected_sign_total
from mergelab.engine.stream import TensorStream
from mergelab.methods import MergeMethod, TensorContext, TrimRule
from mergelab.methods.trim import MagnitudeSelector, keep_count


def global_trim_contexts(
    stream: TensorStream, names: list[str], method: MergeMethod, progress: bool
) -> dict[str, TensorContext]:
    """Per-tensor contexts carrying each expert's `TrimRule` and the model-wide majority sign."""
    infos = stream.base.infos()
    n_entries = sum(math.prod(infos[name].shape) for name in names)
    selectors = [MagnitudeSelector(keep_count(n_entries, method.density)) for _ in stream.experts]
    for pass_name in ("trim: coarse histogram", "trim: fine histogram"):
        with tqdm(total=len(names), desc=pass_name, disable=not progress) as bar:
            for _, blocks in stream.blocks(names):
                for magnitudes in blocks.magnitudes():
                    for selector, magnitude in zip(selectors, magnitudes):
                        selector.observe(magnitude)
                del blocks
                bar.update()
        for selector in selectors:
            selector.next_pass()
    contexts: dict[str, TensorContext] = {}
    sign_total = 0.0
    with tqdm(total=len(names), desc="trim: sign", disable=not progress) as bar:
        for name, blocks in stream.blocks(names):
            slice_rules = [
                tuple(selector.rule_for(magnitude) for selector, magnitude in zip(selectors, magnitudes))
                for magnitudes in blocks.magnitudes()
            ]
            contexts[name] = TensorContext(name=name, trim=_tensor_rules(slice_rules))
            sign_total += elected_sign_total(method, blocks, slice_rules, name)
            del blocks
            bar.update()
    majority_sign = -1.0 if sign_total < 0 else 1.0
    return {
        name: TensorContext(name=name, trim=context.trim, majority_sign=majority_sign)
        for name, context in contexts.items()
    }


def _tensor_rules(slice_rules: list[tuple[TrimRule, ...]]) -> tuple[TrimRule, ...]:
    """Each expert's rule for the whole tensor: the cut, and the ties its slices were handed."""
    return tuple(
        TrimRule(threshold=rules[0].threshold, ties_to_keep=sum(rule.ties_to_keep for rule in rules))
        for rules in zip(*slice_rules)
    )
