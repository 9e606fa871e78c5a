"""Slow tier: build the smallest ladder size (reusing $MERGELAB_HOME's cache) and check its quality gates."""

from __future__ import annotations

import pytest

from mergelab import zoo
from mergelab.experiment.zoo_card import evaluate_size, gates

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smallest_size_scores():
    size = zoo.LADDER[0]
    zoo.build(size, device="auto", progress=False)
    return evaluate_size(size, max_examples=200)


def test_quality_gates_hold_on_the_smallest_size(smallest_size_scores):
    size = smallest_size_scores.size
    per_size = [
        row for row in gates([smallest_size_scores], zoo.load_suite()) if row[0].startswith(f"{size}:")
    ]
    assert len(per_size) == 5
    failed = [(gate, text) for gate, ok, text in per_size if not ok]
    assert not failed, failed
