"""The zoo's training loop pieces: the fast loss equals the library's, the learning-rate schedule's shape."""

from __future__ import annotations

import math

import pytest
import torch

from mergelab.zoo.train import IGNORE_INDEX, _schedule, answer_batches, labelled_loss
from tests.conftest import tiny_llama


def test_labelled_loss_equals_the_masked_full_forward_loss_on_right_padded_answers():
    """Without a mask and with the vocabulary projection at the labelled positions only, the loss is the
    library's masked full-batch loss (right padding never reaches a real token under the causal mask)."""
    model = tiny_llama(seed=3, tie=True).eval()
    examples = [([1, 5, 9, 11], [20, 2]), ([1, 7], [30, 31, 2]), ([1, 4, 4, 4, 4, 8], [40, 2])]
    input_ids, labels = answer_batches(examples, batch_size=6, pad_id=0)(torch.Generator().manual_seed(0))
    lengths = torch.tensor([int((row != 0).sum()) for row in input_ids])
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        actual = labelled_loss(model, input_ids, labels)
    assert (labels != IGNORE_INDEX).sum() > 6
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5)


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_zero():
    steps, warmup = 110, 10
    assert [_schedule(step, steps, warmup) for step in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert _schedule(10, steps, warmup) == pytest.approx(1.0)  # cos(0)
    assert _schedule(60, steps, warmup) == pytest.approx(0.5)  # halfway: (1 + cos(pi / 2)) / 2
    assert _schedule(35, steps, warmup) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert _schedule(109, steps, warmup) == pytest.approx((1 + math.cos(math.pi * 0.99)) / 2)
