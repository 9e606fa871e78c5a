"""mergelab.experiment.intervals: the paired bootstrap on cases with known answers, chance correction and
the verdict words."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mergelab.experiment import intervals
from mergelab.experiment.intervals import Interval, PairedBootstrap


def task_mean_draws(bootstrap: PairedBootstrap, task: str, correct, clusters=None) -> np.ndarray:
    weights = bootstrap.example_weights(task, range(len(correct)), clusters)
    return intervals.weighted_mean(correct, weights)


def test_a_constant_paired_difference_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 150).astype(float)
    b = a - 0.1  # every example: a is 0.1 above b
    bootstrap = PairedBootstrap(draws=500, seed=3)
    delta = intervals.delta_interval(
        a.mean(), task_mean_draws(bootstrap, "t", a), b.mean(), task_mean_draws(bootstrap, "t", b)
    )
    assert (delta.estimate, delta.low, delta.high) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)


def test_independent_coin_flips_cover_zero_at_the_nominal_rate():
    """Two conditions that are fair coins on every one of 200 examples: their true difference is 0. Over
    400 seeds the share of 95% intervals that cover 0 has a binomial standard error of
    sqrt(0.95 * 0.05 / 400) = 0.011; the percentile bootstrap at n = 200 under-covers by well under a point,
    so a coverage outside 0.95 +- 0.035 (about 3 standard errors) means the bootstrap is wrong."""
    seeds, n = 400, 200
    covered = 0
    for seed in range(seeds):
        rng = np.random.default_rng(10_000 + seed)
        a, b = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
        bootstrap = PairedBootstrap(draws=1000, seed=seed)
        delta = intervals.delta_interval(
            a.mean(), task_mean_draws(bootstrap, "t", a), b.mean(), task_mean_draws(bootstrap, "t", b)
        )
        covered += delta.low <= 0 <= delta.high
    assert abs(covered / seeds - 0.95) < 0.035


def test_the_interval_of_a_mean_matches_the_binomial_standard_error():
    """An accuracy of 0.7 on 400 examples: the 95% interval is about +- 1.96 * sqrt(0.7 * 0.3 / 400)."""
    correct = np.array([1.0] * 280 + [0.0] * 120)
    interval = intervals.percentile_interval(
        correct.mean(), task_mean_draws(PairedBootstrap(draws=4000, seed=1), "t", correct)
    )
    half_width = 1.96 * intervals.binomial_standard_error(0.7, 400)
    assert interval.estimate == pytest.approx(0.7)
    assert interval.low == pytest.approx(0.7 - half_width, abs=0.01)
    assert interval.high == pytest.approx(0.7 + half_width, abs=0.01)


def test_clustering_widens_the_interval_when_items_of_a_cluster_are_perfectly_correlated():
    """20 entities of 10 items each, every item of an entity right or wrong together: there are 20
    independent outcomes, not 200, so the clustered interval is about sqrt(10) ~ 3.2 times wider."""
    rng = np.random.default_rng(5)
    entity_outcome = rng.integers(0, 2, 20).astype(float)
    clusters = np.repeat([f"e{index}" for index in range(20)], 10)
    correct = np.repeat(entity_outcome, 10)
    bootstrap = PairedBootstrap(draws=2000, seed=0)
    plain = intervals.percentile_interval(correct.mean(), task_mean_draws(bootstrap, "t", correct))
    clustered = intervals.percentile_interval(
        correct.mean(), task_mean_draws(bootstrap, "t", correct, clusters)
    )
    ratio = (clustered.high - clustered.low) / (plain.high - plain.low)
    assert 2.4 < ratio < 4.2
    weights = bootstrap.example_weights("t", range(200), clusters)
    assert (weights.reshape(2000, 20, 10) == weights.reshape(2000, 20, 10)[:, :, :1]).all()


def test_subsets_are_resampled_and_paired_by_identity():
    """Two subsets whose runs score 0 and 1: the mean over resampled subsets is 0, 0.5 or 1 with
    probabilities 1/4, 1/2, 1/4, so its 95% interval is [0, 1]."""
    bootstrap = PairedBootstrap(draws=2000, seed=0)
    weights = bootstrap.subset_weights([0, 1])
    draws = intervals.weighted_mean([0.0, 1.0], weights)
    assert set(np.unique(draws)) == {0.0, 0.5, 1.0}
    assert abs((draws == 0.5).mean() - 0.5) < 0.05
    interval = intervals.percentile_interval(0.5, draws)
    assert (interval.low, interval.high) == (0.0, 1.0)
    # the same subsets in another order get the same (reordered) weights
    assert (bootstrap.subset_weights([1, 0]) == weights[:, ::-1]).all()


def test_weights_do_not_depend_on_the_order_of_requests():
    first, second = PairedBootstrap(draws=50, seed=7), PairedBootstrap(draws=50, seed=7)
    a1 = first.example_weights("a", range(30))
    first.example_weights("b", range(30))
    second.example_weights("b", range(30))
    assert (second.example_weights("a", range(30)) == a1).all()
    assert not (PairedBootstrap(draws=50, seed=8).example_weights("a", range(30)) == a1).all()
    assert (a1.sum(axis=1) == 30).all()  # each draw picks 30 examples


def test_weighted_mean_leaves_out_undefined_values():
    weights = np.array([[1, 1, 1], [0, 0, 2]])
    assert intervals.weighted_mean([1.0, math.nan, 0.0], weights) == pytest.approx([0.5, 0.0])
    assert math.isnan(intervals.weighted_mean([math.nan, 1.0, math.nan], np.array([[1, 0, 1]]))[0])


def test_chance_correction_on_hand_cases():
    assert intervals.chance_corrected(0.5, 0.75, 0.25) == pytest.approx(0.5)
    assert intervals.chance_corrected(0.25, 0.75, 0.25) == 0.0
    assert intervals.chance_corrected(0.75, 0.75, 0.25) == 1.0
    assert intervals.chance_corrected(0.2, 0.75, 0.25) == pytest.approx(-0.1)  # below chance: negative
    assert math.isnan(intervals.chance_corrected(0.5, 1 / 3, 1 / 3))
    # the case: a random guesser (0.333) over a reference below chance (0.315) is no gain
    assert intervals.chance_corrected(1 / 3, 0.315, 1 / 3) == pytest.approx(0.0)
    assert intervals.chance_corrected([0.5, 1.0], [1.0, 1.0], [0.5, 0.0]) == pytest.approx([0.0, 1.0])


def test_near_chance_flags_references_within_two_standard_errors_or_below_chance():
    se = intervals.binomial_standard_error(0.315, 100)
    assert se == pytest.approx(math.sqrt(0.315 * 0.685 / 100))
    assert intervals.near_chance(0.315, 1 / 3, se)
    assert not intervals.near_chance(0.6, 1 / 3, intervals.binomial_standard_error(0.6, 100))
    assert intervals.near_chance(0.4, 1 / 3, 0.034)  # 0.0667 <= 2 * 0.034
    assert not intervals.near_chance(0.4, 1 / 3, 0.033)
    assert intervals.near_chance(0.0, 1 / 6, 0.0)  # below chance is never a usable reference


@pytest.mark.parametrize(
    ("interval", "direction", "word"),
    [
        (Interval(0.03, 0.01, 0.05), 1, "reproduced"),
        (Interval(0.03, 0.01, 0.05), -1, "contradicted"),
        (Interval(-0.03, -0.05, -0.01), -1, "reproduced"),
        (Interval(-0.03, -0.05, -0.01), 1, "contradicted"),
        (Interval(0.02, -0.01, 0.05), 1, "not resolved"),
        (Interval(0.0, 0.0, 0.05), 1, "not resolved"),  # touching zero does not exclude it
        (Interval(math.nan, math.nan, math.nan), 1, "not resolved"),
    ],
)
def test_verdict_words(interval, direction, word):
    assert intervals.verdict(interval, direction) == word
    assert word in intervals.VERDICTS


def test_interval_formatting():
    assert Interval(0.0123, -0.004, 0.031).format(1, 100, signed=True) == "+1.2 [-0.4, +3.1]"
    assert Interval(math.nan, math.nan, math.nan).format() == "nan"


def test_subset_mean_weights_each_draw_by_its_subset_counts():
    draws = np.array([[0.2, 0.4, math.nan], [1.0, 0.0, 0.5]])
    weights = np.array([[1, 3, 5], [0, 0, 2]])
    assert intervals.subset_mean(draws, weights) == pytest.approx([(0.2 + 3 * 0.4) / 4, 0.5])
