"""Token ids of statistic examples, tokenized the way the evaluators and the zoo's fine-tuning do.

The prompt is tokenized with the tokenizer's special tokens (e.g. a leading `<bos>`), each answer without
them, and the model input is the concatenation (as `mergelab.eval.rank`). A generation answer is the target
followed by `<eos>` when the tokenizer has one (what the zoo's experts were trained to produce); a
classification answer is one choice, scored exactly as rank classification scores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mergelab.eval.inputs import check_prompts, encode
from mergelab.stats.data import Example


@dataclass(frozen=True)
class EncodedExample:
    """One example's prompt ids and answer ids: one entry per choice, or the single target."""

    prompt: list[int]
    answers: list[list[int]]
    label: int  # index into answers of the labelled answer (0 for generation)
    is_classification: bool

    @property
    def target(self) -> list[int]:
        """The labelled answer's ids."""
        return self.answers[self.label]


def encode_examples(tokenizer, examples: Sequence[Example]) -> list[EncodedExample]:
    """Token ids of every example; prompts or answers that tokenize to nothing are errors."""
    prompts = [example.prompt for example in examples]
    prompt_ids = encode(tokenizer, prompts, add_special_tokens=True)
    check_prompts(prompts, prompt_ids)
    answers = sorted({text for example in examples for text in (*example.choices, example.target)})
    answer_ids = dict(zip(answers, encode(tokenizer, answers, add_special_tokens=False)))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = []
    for index, (example, prompt) in enumerate(zip(examples, prompt_ids)):
        texts = example.choices if example.is_classification else (example.target,)
        for text in texts:
            if not answer_ids[text]:
                raise ValueError(f"answer {text!r} of example {index} tokenizes to no tokens")
        if example.is_classification:
            encoded.append(
                EncodedExample(prompt, [answer_ids[c] for c in example.choices], example.label, True)
            )
        else:
            encoded.append(EncodedExample(prompt, [answer_ids[example.target] + eos], 0, False))
    return encoded
