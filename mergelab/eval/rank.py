"""Rank classification: pick the answer choice with the highest log-likelihood given the prompt.

Tokenization: the prompt is tokenized with the tokenizer's special tokens (e.g. a leading `<bos>`) and each
choice separately without them; the model input is the concatenation of the two id lists. A choice is
therefore scored on exactly its own tokens, never on tokens that merge across the prompt/choice boundary
(the zoo's prompts end with a separator such as " Answer:" and its targets start with a space, so the two
tokenizations agree with tokenizing `prompt + choice` as one text).

Score of a choice = sum over its tokens of log p(token | prompt, previous choice tokens); with
`length_normalize` the sum is divided by the number of choice tokens. Every (example, choice) pair is one
row; rows of many examples share a forward pass (`batch_size` rows at a time), sorted by length so that
batches carry little padding. Rows are right-padded with an attention mask: the real tokens of every row
start at position 0, so the default position ids are correct and padding never changes a score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mergelab.eval.choices import causal_lm_batch, choice_rows, token_log_prob_sums
from mergelab.eval.inputs import padding_id, resolve_device
from mergelab.eval.seq2seq_rank import seq2seq_choice_scores


@torch.no_grad()
def choice_scores(
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
    """Score of every choice of every example: summed (or, length-normalized, mean) token log-probability.

    `model(input_ids=..., attention_mask=...).logits` is all that is used, so any causal LM with the
    Hugging Face interface works; an encoder-decoder (`model.config.is_encoder_decoder`) is scored by
    `seq2seq_choice_scores` instead. `batch_size` counts (example, choice) rows per forward pass.
    """
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return seq2seq_choice_scores(
            model,
            tokenizer,
            prompts,
            choices,
            batch_size=batch_size,
            length_normalize=length_normalize,
            device=device,
            progress=progress,
            desc=desc,
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = choice_rows(tokenizer, prompts, choices)
    device = resolve_device(model, device)
    pad_id = padding_id(tokenizer)
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]) + len(rows[r][3]), reverse=True)
    scores = [[0.0] * len(options) for options in choices]
    for start in tqdm(
        range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch", leave=False
    ):
        batch = [rows[r] for r in order[start : start + batch_size]]
        input_ids, attention_mask, targets = causal_lm_batch(batch, pad_id)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        sums = token_log_prob_sums(logits, targets.to(device)).cpu().tolist()
        for (example, index, _, choice), total in zip(batch, sums):
            scores[example][index] = total / len(choice) if length_normalize else total
    return scores


def rank_classification(
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
) -> list[int]:
    """Index of the best-scoring choice per example (see `choice_scores`; a tie goes to the first choice)."""
    scores = choice_scores(
        model,
        tokenizer,
        prompts,
        choices,
        batch_size=batch_size,
        length_normalize=length_normalize,
        device=device,
        progress=progress,
        desc=desc,
    )
    return [max(range(len(row)), key=row.__getitem__) for row in scores]
