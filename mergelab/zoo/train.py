"""Seeded training loops for the zoo: causal-LM pretraining on packed text and answer-only fine-tuning.

Both draw batches from a `torch.Generator` seeded per component and run AdamW with linear warm-up and decay,
so the same seed gives byte-identical weights on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

IGNORE_INDEX = -100


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def train_loop(
    model: torch.nn.Module,
    next_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    desc: str,
    progress: bool = True,
) -> float:
    """Run `steps` AdamW steps on batches from `next_batch`; returns the mean loss of the last 10% of steps."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    tail: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * _schedule(step, steps, warmup)
        input_ids, attention_mask, labels = (tensor.to(device) for tensor in next_batch(generator))
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
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
        return input_ids, torch.ones_like(input_ids), input_ids.clone()

    return next_batch


def answer_batches(examples: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int):
    """Random (prompt, answer) pairs, right-padded; the loss covers the answer tokens only."""

    def next_batch(generator: torch.Generator):
        picks = torch.randint(0, len(examples), (batch_size,), generator=generator).tolist()
        rows = [examples[index] for index in picks]
        length = max(len(prompt) + len(answer) for prompt, answer in rows)
        input_ids = torch.full((batch_size, length), pad_id)
        labels = torch.full((batch_size, length), IGNORE_INDEX)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        for row, (prompt, answer) in enumerate(rows):
            ids = prompt + answer
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, len(prompt) : len(ids)] = torch.tensor(answer)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask, labels

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
