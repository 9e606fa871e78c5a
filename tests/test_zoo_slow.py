"""Slow tier: build the two smallest ladder sizes (reusing $MERGELAB_HOME's cache) and check the quality gates."""

from __future__ import annotations

import pytest

from mergelab import zoo
from mergelab.experiment.zoo_card import evaluate_size, gates

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ladder_scores():
    sizes = zoo.LADDER[:2]
    for size in sizes:
        zoo.build(size, device="auto", progress=False)
    return [evaluate_size(size, max_examples=100) for size in sizes]


def test_quality_gates_hold_on_the_smallest_sizes(ladder_scores):
    failed = [(gate, text) for gate, ok, text in gates(ladder_scores, zoo.load_suite()) if not ok]
    assert not failed, failed
