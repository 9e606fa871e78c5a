"""Paired bootstrap confidence intervals, chance-corrected scores and honest verdicts (pure numpy/pandas).

A study's summary numbers are means over expert subsets of scores measured on a finite test set, so they
carry two kinds of sampling noise: which subsets of experts were merged, and which test examples were
drawn. `PairedBootstrap` resamples both, nested: each draw resamples the subsets (with replacement), and,
within each task, the test examples (with replacement) -- or, where the examples share an entity, the
entities (a cluster bootstrap: every example of a drawn entity comes along, so items that stand or fall
together are not counted as independent evidence). A draw is a set of nonnegative integer weights, one per
subset and one per example of each task, rather than a list of indices, so a statistic is a weighted mean.

Pairing: the test set of a task is drawn once and every model is evaluated on the same items, so one
example resample per task serves every run, subset and condition of a draw; subsets are resampled by
their identity (the seed that drew them). Weights are cached per task (and per set of subsets) and seeded
from the bootstrap seed and that key, never from call order, so both sides of a comparison, and every
statistic of one report, see exactly the same resamples. A delta's interval is then the percentile
interval of the per-draw differences, which is narrower than the two marginal intervals whenever the
conditions' errors are correlated (they are: same items, same subsets).

Intervals are percentile intervals (2.5% and 97.5% quantiles of the draws, for the default 95% level)
around the statistic computed on the observed data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

DRAWS = 2000
LEVEL = 0.95
VERDICTS = ("reproduced", "contradicted", "not resolved")


@dataclass(frozen=True)
class Interval:
    """A statistic's value on the observed data and its percentile interval [low, high]."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 3, factor: float = 1.0, signed: bool = False) -> str:
        """`estimate [low, high]`, each multiplied by `factor` (e.g. 100 for points); 'nan' when undefined."""
        if math.isnan(self.estimate):
            return "nan"
        sign = "+" if signed else ""
        value, low, high = (factor * number for number in (self.estimate, self.low, self.high))
        return f"{value:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _rng(seed: int, key: object) -> np.random.Generator:
    """A generator seeded by `seed` and a stable digest of `key` (Python's hash() is salted per process)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _digest(values) -> str:
    """A short stable digest of a sequence of numbers (examples are integers, correctness 0 / 1)."""
    return hashlib.sha256(np.asarray(values, dtype=np.float64).tobytes()).hexdigest()[:16]


def resample_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n) counts: how often each of n units is picked when n are drawn with replacement."""
    if n < 1:
        raise ValueError(f"cannot resample {n} units")
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws)


def cluster_counts(clusters: Sequence[Hashable], draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, items) weights of a cluster bootstrap: the distinct clusters are resampled with
    replacement and every item weighs as often as its cluster was drawn."""
    _, cluster_of_item = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return resample_counts(int(cluster_of_item.max()) + 1, draws, rng)[:, cluster_of_item]


class PairedBootstrap:
    """Seeded resampling weights shared by every statistic of one analysis (see the module docstring)."""

    def __init__(self, draws: int = DRAWS, seed: int = 0):
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        self.draws = draws
        self.seed = seed
        self._weights: dict[tuple, object] = {}
        self._means: dict[tuple, np.ndarray] = {}

    def example_weights(
        self, task: str, examples: Sequence[int], clusters: Sequence[Hashable] | None = None
    ) -> np.ndarray:
        """(draws, len(examples)) weights of one task's test examples (identified by their index in the
        split); with `clusters` (one entity per example), whole clusters are resampled."""
        return self._examples(task, examples, clusters)[0]

    def example_means(
        self,
        task: str,
        examples: Sequence[int],
        values: Sequence[float],
        clusters: Sequence[Hashable] | None = None,
    ) -> np.ndarray:
        """Per draw, the mean of one task's per-example `values` (no NaN) over its resampled examples
        (cached: a reference model's values recur in every run that it normalizes)."""
        values = np.asarray(values, dtype=float)
        key = ("means", task, _digest(examples), clusters is not None, _digest(values))
        if key not in self._means:
            weights, totals = self._examples(task, examples, clusters)
            self._means[key] = (weights @ values) / totals
        return self._means[key]

    def _examples(
        self, task: str, examples: Sequence[int], clusters: Sequence[Hashable] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cached (weights, weights summed per draw) of one task's examples."""
        key = ("examples", task, len(examples), _digest(examples), clusters is not None)
        if key not in self._weights:
            rng = _rng(self.seed, key)
            if clusters is None:
                counts = resample_counts(len(examples), self.draws, rng)
            else:
                if len(clusters) != len(examples):
                    raise ValueError(f"task {task}: {len(clusters)} clusters for {len(examples)} examples")
                counts = cluster_counts(clusters, self.draws, rng)
            weights = counts.astype(float)  # float for matrix products with scores
            self._weights[key] = (weights, weights.sum(axis=1))
        return self._weights[key]

    def subset_weights(self, subsets: Sequence[Hashable]) -> np.ndarray:
        """(draws, len(subsets)) weights of the expert subsets (identified by their seed); the same set of
        subsets gets the same weights in any order of the arguments."""
        order = sorted(set(subsets), key=repr)
        if len(order) != len(subsets):
            raise ValueError(f"subsets must be distinct, got {list(subsets)}")
        key = ("subsets", tuple(order))
        if key not in self._weights:
            self._weights[key] = resample_counts(len(order), self.draws, _rng(self.seed, key))
        columns = [order.index(subset) for subset in subsets]
        return self._weights[key][:, columns]


def weighted_mean(values: Sequence[float] | np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per draw, the weighted mean of `values` (axis -1 of weights matches values); NaN where a draw
    gives every defined value zero weight. NaN values are left out."""
    values = np.asarray(values, dtype=float)
    defined = ~np.isnan(values)
    if defined.all() and weights.ndim == 2:  # the common case, as one matrix product
        total = weights.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (weights @ values) / total, np.nan)
    weights = np.where(defined, weights, 0)
    total = weights.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * np.where(defined, values, 0.0)).sum(axis=-1) / total, np.nan)


def subset_mean(draws: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per draw (row), the mean of `draws` (draws x subsets, a statistic per subset per draw) weighted by
    the subsets' resampling `weights` (same shape); NaN entries are left out."""
    defined = ~np.isnan(draws)
    weights = np.where(defined, weights, 0)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * np.where(defined, draws, 0.0)).sum(axis=1) / total, np.nan)


def percentile_interval(estimate: float, draws: np.ndarray, level: float = LEVEL) -> Interval:
    """The `level` percentile interval of a statistic's bootstrap `draws` (NaN draws left out)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[~np.isnan(draws)]
    if math.isnan(estimate) or draws.size == 0:
        return Interval(float(estimate), math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def delta_interval(
    estimate_a: float, draws_a: np.ndarray, estimate_b: float, draws_b: np.ndarray, level: float = LEVEL
) -> Interval:
    """Interval of a - b from paired draws (the same resamples on both sides, draw by draw)."""
    return percentile_interval(
        estimate_a - estimate_b, np.asarray(draws_a, dtype=float) - np.asarray(draws_b, dtype=float), level
    )


def chance_corrected(score, reference, chance):
    """(score - chance) / (reference - chance): 0 at chance, 1 at the reference; NaN where the reference
    is at chance. Works elementwise on arrays."""
    score, reference, chance = (np.asarray(value, dtype=float) for value in (score, reference, chance))
    margin = reference - chance
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.where(margin != 0, (score - chance) / np.where(margin != 0, margin, 1.0), np.nan)
    return float(corrected) if corrected.ndim == 0 else corrected


def binomial_standard_error(score: float, n: int) -> float:
    """Standard error of an accuracy `score` measured on `n` independent examples."""
    return math.sqrt(score * (1 - score) / n) if n > 0 else math.nan


def near_chance(reference: float, chance: float, standard_error: float) -> bool:
    """Whether a reference score is not clearly above chance: within 2 standard errors of it, or below it
    (a score normalized by such a reference divides by noise)."""
    return reference - chance <= 2 * standard_error


def informative_reference(reference: float, chance: float, examples: int) -> bool:
    """Whether a reference score measured on `examples` test examples is clearly above chance (not
    `near_chance` by its binomial standard error), so that a chance-corrected score, which divides by
    reference - chance, is not noise; True when the count is unknown (rows stored without examples)."""
    if examples <= 0:
        return True
    return not near_chance(reference, chance, binomial_standard_error(reference, examples))


def verdict(interval: Interval, paper_direction: int) -> str:
    """'reproduced' when the interval excludes zero on the paper's side (`paper_direction` +1: the paper
    reports an increase, -1: a decrease), 'contradicted' when it excludes zero on the other side, else
    'not resolved' (also when the interval is undefined)."""
    if paper_direction not in (1, -1):
        raise ValueError(f"paper_direction must be +1 or -1, got {paper_direction}")
    if math.isnan(interval.low) or math.isnan(interval.high) or not interval.excludes_zero():
        return "not resolved"
    return "reproduced" if (interval.low > 0) == (paper_direction > 0) else "contradicted"
