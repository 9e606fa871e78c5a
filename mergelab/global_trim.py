"""Model-wide trimming facts for methods with `trim_scope: global`, computed in streaming passes.

Two passes find each expert's exact magnitude cut with `MagnitudeSelector`; a third hands out the cut's ties
in canonical order and sums the elected signs, whose sign is the majority that zero votes take. No pass
holds more than one tensor of each checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from mergelab.methods import MergeMethod, TensorContext
from mergelab.methods.trim import MagnitudeSelector, keep_count

if TYPE_CHECKING:
    from mergelab.engine import TensorStream


def global_trim_contexts(
    stream: TensorStream, names: list[str], method: MergeMethod, progress: bool
) -> dict[str, TensorContext]:
    """Per-tensor contexts carrying each expert's `TrimRule` and the model-wide majority sign."""
    infos = stream.base.infos()
    n_entries = sum(math.prod(infos[name].shape) for name in names)
    selectors = [MagnitudeSelector(keep_count(n_entries, method.density)) for _ in stream.experts]
    for pass_name in ("trim: coarse histogram", "trim: fine histogram"):
        with tqdm(total=len(names), desc=pass_name, disable=not progress) as bar:
            for _, base, experts in stream.float32(names):
                for selector, expert in zip(selectors, experts):
                    selector.observe((expert - base).abs_())
                del base, experts
                bar.update()
        for selector in selectors:
            selector.next_pass()
    contexts: dict[str, TensorContext] = {}
    sign_total = 0.0
    with tqdm(total=len(names), desc="trim: sign", disable=not progress) as bar:
        for name, base, experts in stream.float32(names):
            rules = tuple(
                selector.rule_for((expert - base).abs_()) for selector, expert in zip(selectors, experts)
            )
            contexts[name] = TensorContext(name=name, trim=rules)
            sign_total += method.elected_sign_total(base, experts, contexts[name])
            del base, experts
            bar.update()
    majority_sign = -1.0 if sign_total < 0 else 1.0
    return {
        name: TensorContext(name=name, trim=context.trim, majority_sign=majority_sign)
        for name, context in contexts.items()
    }
