"""The rows rank classification scores: every (example, choice) pair tokenized, batched for a causal LM, and
the summed log-probability of each row's choice tokens; shared by the causal and the seq2seq scorers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergelab.eval.inputs import check_prompts, check_texts, encode


def choice_rows(
    tokenizer,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    choice_special_tokens: bool = False,
):
    """(example, choice index, prompt ids, choice ids) for every choice of every example; the choices get
    the tokenizer's special tokens only with `choice_special_tokens` (the seq2seq scorer's decoder labels)."""
    check_texts("prompts", prompts)
    if len(prompts) != len(choices):
        raise ValueError(
            f"prompts and choices differ in length: {len(prompts)} prompts, {len(choices)} choice lists"
        )
    for example, options in enumerate(choices):
        check_texts(f"choices[{example}]", options)
        if not options:
            raise ValueError(f"example {example} has no answer choices")
    prompt_ids = encode(tokenizer, prompts, add_special_tokens=True)
    check_prompts(prompts, prompt_ids)
    unique_choices = sorted({option for options in choices for option in options})
    encoded = encode(tokenizer, unique_choices, add_special_tokens=choice_special_tokens)
    choice_ids = dict(zip(unique_choices, encoded))
    rows = []
    for example, options in enumerate(choices):
        for index, option in enumerate(options):
            if not choice_ids[option]:
                raise ValueError(f"choice {option!r} of example {example} tokenizes to no tokens")
            rows.append((example, index, prompt_ids[example], choice_ids[option]))
    return rows


def causal_lm_batch(batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and targets (-100 except where a choice token is predicted)."""
    length = max(len(prompt) + len(choice) for _, _, prompt, choice in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    targets = torch.full((len(batch), length), -100, dtype=torch.long)
    for row, (_, _, prompt, choice) in enumerate(batch):
        total = len(prompt) + len(choice)
        input_ids[row, :total] = torch.tensor(prompt + choice)
        attention_mask[row, :total] = 1
        # the logits at position t predict token t + 1: choice token j sits at len(prompt) + j
        targets[row, len(prompt) - 1 : total - 1] = torch.tensor(choice)
    return input_ids, attention_mask, targets


def token_log_prob_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the sum of log-softmax(logits)[t, targets[t]] over positions whose target is not -100.

    The log-softmax is taken only at those positions (a few per row), not over the whole padded batch.
    """
    rows, positions = (targets != -100).nonzero(as_tuple=True)
    log_probs = torch.log_softmax(logits[rows, positions].float(), dim=-1)
    picked = log_probs.gather(-1, targets[rows, positions].unsqueeze(-1)).squeeze(-1)
    return torch.zeros(targets.shape[0], dtype=picked.dtype, device=picked.device).index_add_(0, rows, picked)
