"""Rank classification with an encoder-decoder (T5, Flan-T5): each answer choice scored as decoder labels.

The prompt is the encoder input and each choice the decoder's target, both tokenized with the tokenizer's
special tokens, as in T0's evaluation (T5's tokenizer appends `</s>` to each, so a choice is also scored
on ending where it should). Score of a choice = sum over its target tokens of log p(token | prompt,
previous target tokens), divided by the number of target tokens with `length_normalize`. Every
(example, choice) pair is one row; encoder inputs are right-padded with an attention mask and targets
right-padded with -100, so padding never changes a score (the model shifts the labels right to build the
decoder inputs, turning -100 into the pad token, and causal decoder attention never looks at later slots).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mergelab.eval.choices import choice_rows, token_log_prob_sums
from mergelab.eval.inputs import padding_id, resolve_device, right_padded


@torch.no_grad()
def seq2seq_choice_scores(
    model,
    tokenizer,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    length_normalize: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "rank",
) -> list[list[float]]:
    """Score of every choice of every example under an encoder-decoder `model` (see the module docstring).

    Uses `model(input_ids=..., attention_mask=..., labels=...).logits`, the Hugging Face seq2seq interface.
    `batch_size` counts (example, choice) rows per forward pass.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = choice_rows(tokenizer, prompts, choices, choice_special_tokens=True)
    device = resolve_device(model, device)
    pad_id = padding_id(tokenizer)
    order = sorted(range(len(rows)), key=lambda r: (len(rows[r][2]), len(rows[r][3])), reverse=True)
    scores = [[0.0] * len(options) for options in choices]
    for start in tqdm(
        range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch", leave=False
    ):
        batch = [rows[r] for r in order[start : start + batch_size]]
        input_ids, attention_mask = right_padded([prompt for _, _, prompt, _ in batch], pad_id)
        labels, _ = right_padded([target for _, _, _, target in batch], -100)
        labels = labels.to(device)
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), labels=labels
        ).logits
        sums = token_log_prob_sums(logits, labels).cpu().tolist()
        for (example, index, _, target), total in zip(batch, sums):
            scores[example][index] = total / len(target) if length_normalize else total
    return scores
