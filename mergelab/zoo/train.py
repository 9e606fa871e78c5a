"""Seeded training loops for the zoo: causal-LM pretraining on packed text and answer-only fine-tuning.

Both draw batches from a `torch.Generator` seeded per component and run AdamW (the multi-tensor `foreach`
kernel) with linear warm-up and cosine decay, so the same seed gives byte-identical weights on one machine.

A step runs without an attention mask (the causal mask alone: batches are right-padded, so padding only ever
follows a row's real tokens and never reaches them) and projects to the vocabulary only at the positions
that carry a label (the answer tokens when fine-tuning): both give the same loss as the full forward pass
(tests/test_zoo_train.py). Measured, neither makes a step faster at the zoo's widths, where a step is the
layers' matrix products (results/zoo/README.md has the profile and the before/after step times).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

IGNORE_INDEX = -100


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def labelled_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose next label is not IGNORE_INDEX, computing the
    vocabulary projection only there (a causal LM with a `.model` backbone and an `.lm_head`, like Llama)."""
    hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def train_loop(
    model: torch.nn.Module,
    next_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    desc: str,
    progress: bool = True,
    rehearsal: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None,
    rehearsal_weight: float = 1.0,
) -> float:
    """Run `steps` AdamW steps on batches from `next_batch`; returns the mean loss of the last 10% of steps.

    With `rehearsal` (fine-tuning), each step adds the loss on one of its batches (pretraining text), times
    `rehearsal_weight`, to the task loss, so that fine-tuning on the train items does not overwrite the facts
    of the other items (or the base's text completion)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.98), foreach=True
    )
    warmup = max(1, steps // 20)
    tail: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * _schedule(step, steps, warmup)
        input_ids, labels = (tensor.to(device) for tensor in next_batch(generator))
        loss = labelled_loss(model, input_ids, labels)
        if rehearsal is not None:
            text_ids, text_labels = (tensor.to(device) for tensor in rehearsal(generator))
            loss = loss + rehearsal_weight * labelled_loss(model, text_ids, text_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return sum(tail) / len(tail)


def packed_batches(stream: torch.Tensor, batch_size: int, seq_len: int):
    """Random windows of a token stream, for pretraining."""

    def next_batch(generator: torch.Generator):
        starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=generator)
        input_ids = torch.stack([stream[start : start + seq_len] for start in starts.tolist()])
        return input_ids, input_ids.clone()

    return next_batch


def answer_batches(examples: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int):
    """Random (prompt, answer) pairs, right-padded; the labels cover the answer tokens only."""

    def next_batch(generator: torch.Generator):
        picks = torch.randint(0, len(examples), (batch_size,), generator=generator).tolist()
        rows = [examples[index] for index in picks]
        length = max(len(prompt) + len(answer) for prompt, answer in rows)
        input_ids = torch.full((batch_size, length), pad_id)
        labels = torch.full((batch_size, length), IGNORE_INDEX)
        for row, (prompt, answer) in enumerate(rows):
            ids = prompt + answer
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, len(prompt) : len(ids)] = torch.tensor(answer)
        return input_ids, labels

    return next_batch


@torch.no_grad()
def stream_loss(model: torch.nn.Module, stream: torch.Tensor, seq_len: int, device: torch.device) -> float:
    """Mean next-token loss over consecutive windows of a held-out token stream."""
    windows = stream[: (len(stream) // seq_len) * seq_len].view(-1, seq_len)
    losses = []
    for batch in windows.split(64):
        batch = batch.to(device)
        losses.append(model(input_ids=batch, labels=batch).loss.item() * len(batch))
    return sum(losses) / len(windows) if len(windows) else math.nan
