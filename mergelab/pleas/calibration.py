"""The calibration inputs PLeaS runs every expert on: a mixture of the experts' own training examples.

Every expert sees the same token batches, so activations of different experts can be compared position by
position. The examples come from the shared statistics data module: one data spec per expert
(`zoo:<category>` or a `datasets` directory, see `mergelab.stats.data`), `n_examples` split evenly across
them, each example its prompt followed by its labelled answer, tokenized as the evaluators do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergelab.eval.inputs import right_padded
from mergelab.stats.data import check_data_specs, load_examples
from mergelab.stats.encode import encode_examples

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, attention_mask), right-padded


def calibration_examples(
    data: Sequence[str] | None, n_experts: int, tokenizer, n_examples: int
) -> list[list[int]]:
    """About `n_examples` token sequences in all: an even share from each expert's data spec (seeded).

    A spec with fewer examples than its share contributes all it has.
    """
    specs = check_data_specs(data, n_experts, "pleas")
    share, extra = divmod(n_examples, n_experts)
    sequences: list[list[int]] = []
    for index, spec in enumerate(specs):
        count = share + (index < extra)
        if count == 0:
            continue
        examples = load_examples(spec, count, seed=index).examples
        sequences += [example.prompt + example.target for example in encode_examples(tokenizer, examples)]
    return sequences


def token_batches(examples: Sequence[list[int]], batch_size: int, pad_id: int) -> list[Batch]:
    """Right-padded batches of the examples, in order."""
    return [
        right_padded(examples[start : start + batch_size], pad_id)
        for start in range(0, len(examples), batch_size)
    ]
