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

An example whose choices are all one token long is scored from one forward pass of its prompt alone: the
log-probabilities at the prompt's last position give every choice's score at once (the same numbers as
the per-choice rows, since a causal model's logits there see only the prompt). The zoo's classification
tasks are all of this kind, so scoring a six-way question costs one pass instead of six.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mergelab.eval.choices import causal_lm_batch, choice_rows, token_log_prob_sums
from mergelab.eval.inputs import padding_id, resolve_device, right_padded
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
    scores = [[0.0] * len(options) for options in choices]
    multi_token = {example for example, _, _, choice in rows if len(choice) > 1}
    one_token = [row for row in rows if row[0] not in multi_token]
    rows = [row for row in rows if row[0] in multi_token]
    prompt_passes = _prompt_passes(one_token, batch_size)
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]) + len(rows[r][3]), reverse=True)
    row_passes = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    with tqdm(
        total=len(prompt_passes) + len(row_passes), desc=desc, disable=not progress, unit="batch", leave=False
    ) as bar:
        for batch in prompt_passes:
            input_ids, attention_mask = right_padded([prompt for prompt, _ in batch], pad_id)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            last = logits[torch.arange(len(batch)), attention_mask.sum(dim=1).to(device) - 1]
            log_probs = torch.log_softmax(last.float(), dim=-1).cpu()
            for row, (_, options) in enumerate(batch):
                for example, index, token in options:
                    scores[example][index] = log_probs[row, token].item()
            bar.update()
        for batch in ([rows[r] for r in indices] for indices in row_passes):
            input_ids, attention_mask, targets = causal_lm_batch(batch, pad_id)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            sums = token_log_prob_sums(logits, targets.to(device)).cpu().tolist()
            for (example, index, _, choice), total in zip(batch, sums):
                scores[example][index] = total / len(choice) if length_normalize else total
            bar.update()
    return scores


def _prompt_passes(rows, batch_size: int) -> list[list[tuple[list[int], list[tuple[int, int, int]]]]]:
    """The one-token-choice rows grouped by example into (prompt ids, [(example, choice index, token)]),
    longest prompt first, `batch_size` prompts per forward pass."""
    by_example: dict[int, tuple[list[int], list[tuple[int, int, int]]]] = {}
    for example, index, prompt, choice in rows:
        by_example.setdefault(example, (prompt, []))[1].append((example, index, choice[0]))
    prompts = sorted(by_example.values(), key=lambda entry: len(entry[0]), reverse=True)
    return [prompts[start : start + batch_size] for start in range(0, len(prompts), batch_size)]


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
