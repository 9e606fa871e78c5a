"""Greedy generation with exact match, batched with left padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mergelab.eval.rank import model_device


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    device: torch.device | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy continuation of each prompt up to eos or `max_new_tokens`, decoded without special tokens."""
    device = device or model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, leave=False):
        encoded = [tokenizer(prompt).input_ids for prompt in prompts[start : start + batch_size]]
        length = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs += tokenizer.batch_decode(generated[:, length:].cpu(), skip_special_tokens=True)
    return outputs


def normalize_answer(text: str) -> str:
    """Exact match compares answers with surrounding whitespace removed and inner runs collapsed."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)
