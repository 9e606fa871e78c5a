"""Greedy generation with exact match.

Prompts are tokenized with the tokenizer's special tokens, sorted by length, and batched with LEFT padding
(so every row's next token is predicted at the last position); `model.generate` derives the position ids
from the attention mask, so a padded row continues exactly as it would alone. An encoder-decoder
(`model.config.is_encoder_decoder`, e.g. T5) gets its prompts as RIGHT-padded encoder inputs instead, and
its output is the decoder sequence after the decoder start token. Decoding is greedy (no sampling, one
beam) with the KV cache, and stops at eos or after `max_new_tokens`. The continuation is decoded without
special tokens and stripped of surrounding whitespace.

Exact match compares answers after light normalization: surrounding whitespace removed and inner runs of
whitespace collapsed to one space; case and punctuation count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mergelab.eval.inputs import check_prompts, check_texts, encode, padding_id, resolve_device, right_padded


def _left_padded(encoded: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids, attention_mask


def _until_eos(ids: list[int], eos_id: int | None) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuation of each prompt (up to eos or `max_new_tokens`), decoded and stripped."""
    from transformers import GenerationConfig

    check_texts("prompts", prompts)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = encode(tokenizer, prompts, add_special_tokens=True)
    check_prompts(prompts, encoded)
    device = resolve_device(model, device)
    pad_id = padding_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    pad_rows = right_padded if encoder_decoder else _left_padded
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    outputs = [""] * len(prompts)
    for start in tqdm(
        range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch", leave=False
    ):
        indices = order[start : start + batch_size]
        input_ids, attention_mask = pad_rows([encoded[i] for i in indices], pad_id)
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
        new_tokens = generated[:, 1 if encoder_decoder else input_ids.shape[1] :].cpu().tolist()
        for index, ids in zip(indices, new_tokens):
            text = tokenizer.decode(_until_eos(ids, eos_id), skip_special_tokens=True)
            outputs[index] = text.strip()
    return outputs


def normalize_answer(text: str) -> str:
    """Surrounding whitespace removed, inner whitespace runs collapsed to one space (case is kept)."""
    return " ".join(text.split())


def exact_matches(predictions: Sequence[str], references: Sequence[str]) -> list[int]:
    """Per example, 1 where the prediction equals its reference after `normalize_answer`, else 0."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return [int(normalize_answer(p) == normalize_answer(r)) for p, r in zip(predictions, references)]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after `normalize_answer` (0.0 when empty)."""
    hits = exact_matches(predictions, references)
    return sum(hits) / len(hits) if hits else 0.0
