"""Shared input handling for the evaluators: argument checks, tokenization, device and padding ids."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def resolve_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """`device`, or the device of the model's first parameter when `device` is None."""
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def encode(tokenizer, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each text, in one batched tokenizer call (no padding, no truncation)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens).input_ids]


def padding_id(tokenizer) -> int:
    """Id used to fill padded positions: pad, else eos (padded positions are always masked out)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")


def check_prompts(prompts: Sequence[str], prompt_ids: Sequence[Sequence[int]]) -> None:
    """Every prompt must be text that tokenizes to at least one token (the first answer token needs context)."""
    for index, (prompt, ids) in enumerate(zip(prompts, prompt_ids)):
        if not ids:
            raise ValueError(
                f"prompt {index} ({prompt!r}) tokenizes to no tokens; a prompt needs at least one"
            )


def check_texts(name: str, texts: Sequence[object]) -> None:
    """`texts` must be a sequence of str (a bare str is a common mistake: it would iterate characters)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings, got a single string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] must be a string, got {type(text).__name__}")


def right_padded(rows: Sequence[Sequence[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids right-padded with `fill` into one tensor, and the mask marking the real positions."""
    length = max(len(ids) for ids in rows)
    padded = torch.full((len(rows), length), fill, dtype=torch.long)
    mask = torch.zeros_like(padded)
    for row, ids in enumerate(rows):
        padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return padded, mask
