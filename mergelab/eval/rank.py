"""Rank classification: pick the answer choice with the highest log-likelihood given the prompt.

The prompt is tokenized with the tokenizer's special tokens and each choice without them, and the two id
lists are concatenated, so a choice is scored on exactly its own tokens. Rows (example, choice) are batched
with right padding; a choice's score is the sum of its tokens' log-probabilities, or their mean with
`length_normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def choice_scores(
    model,
    tokenizer,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 64,
    length_normalize: bool = False,
    device: torch.device | None = None,
    progress: bool = True,
) -> list[list[float]]:
    """Score of every choice of every example (sum or mean of its token log-probabilities)."""
    device = device or model_device(model)
    rows: list[tuple[int, list[int], list[int]]] = []
    for example, (prompt, options) in enumerate(zip(prompts, choices)):
        prompt_ids = tokenizer(prompt).input_ids
        for option in options:
            rows.append((example, prompt_ids, tokenizer(option, add_special_tokens=False).input_ids))
    scores: list[list[float]] = [[] for _ in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in tqdm(range(0, len(rows), batch_size), desc="rank", disable=not progress, leave=False):
        batch = rows[start : start + batch_size]
        length = max(len(p) + len(c) for _, p, c in batch)
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, (_, prompt_ids, choice_ids) in enumerate(batch):
            ids = prompt_ids + choice_ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, (example, prompt_ids, choice_ids) in enumerate(batch):
            positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(choice_ids) - 1)
            score = log_probs[row, positions, torch.tensor(choice_ids)].sum().item()
            scores[example].append(score / len(choice_ids) if length_normalize else score)
    return scores


def rank_classification(
    model, tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]], **options
) -> list[int]:
    """Index of the best-scoring choice per example (ties go to the first)."""
    return [
        max(range(len(row)), key=row.__getitem__)
        for row in choice_scores(model, tokenizer, prompts, choices, **options)
    ]
