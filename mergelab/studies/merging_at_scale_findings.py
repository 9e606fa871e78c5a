"""The findings of "What Matters for Model Merging at Scale?" as statistics of a study's runs, with their
spread across expert subsets and, when the rows carry per-example correctness, their 95% interval and
verdict.

Seed views: the runs of one subset seed (of one expert replicate), together with that replicate's runs
whose configuration has a single subset (all experts merged), form one view; every statistic is computed
on each view and reported as mean [min, max] over the views. Runs with the same subset seed and expert
count merge the same categories whatever the base kind, method or replicate, so comparisons within a view
are paired.

Statistics are vectorized over bootstrap draws: a view is a table of configurations (rows) by (score,
draw) columns, and each statistic maps it to one value per draw. The observed statistic is the same
function of a one-draw table holding the observed scores. A draw of the study resamples the test
examples (inside each run's scores, see `mergelab.experiment.score_intervals`) and the subset seeds, i.e.
the views, so a statistic's draw is the mean over its views weighted by the draw's seed counts.

Verdicts (`mergelab.experiment.intervals.verdict`): a statistic with a paper direction is compared with
its null value (0 for a difference, 1 for a ratio to the base): "reproduced" when the interval of
(statistic - null) excludes zero on the paper's side, "contradicted" on the other side, else "not
resolved". Shares and spreads are descriptive and get no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from mergelab.experiment.intervals import Interval, PairedBootstrap, percentile_interval, subset_mean, verdict
from mergelab.experiment.report import CONFIG_KEYS
from mergelab.experiment.results import replicates
from mergelab.experiment.score_intervals import RunDraws

SCORES = ["held_in", "held_out", "held_in_multitask", "held_out_multitask"]
INDEX = ["model", "base_kind", "method", "n_experts"]  # a configuration (parameters follow the model)
GROUP_LABELS = {"held_in": "held-in", "held_out": "held-out"}
KIND_LABELS = {"base": "pretrained base", "it": "IT base"}
Statistic = Callable[[pd.DataFrame], np.ndarray]


def _single_subset(summary: pd.DataFrame) -> pd.Series:
    """Runs whose configuration has one run within its expert replicate (e.g. all experts merged)."""
    keys = [summary[key] for key in CONFIG_KEYS] + [replicates(summary)]
    return summary.groupby(keys)["config_hash"].transform("size") == 1


def seed_views(summary: pd.DataFrame) -> list[pd.DataFrame]:
    """One table per expert draw (`view_seeds`): that draw's runs plus the single-subset runs of its
    replicate."""
    keys = view_seeds(summary)
    if keys == [None]:
        return [summary]
    single, replicate_of = _single_subset(summary), replicates(summary)
    views = []
    for key in keys:
        replicate, seed = key if isinstance(key, tuple) else (0, key)
        own = ~single & (replicate_of == replicate) & (summary["subset_seed"] == seed)
        views.append(summary[own | (single & (replicate_of == replicate))])
    return views


def view_seeds(summary: pd.DataFrame) -> list:
    """The key of each seed view, the unit the bootstrap resamples: the subset seed for the default
    experts (replicate 0), (replicate, seed) for another replicate, seed None for a replicate whose
    configurations each have one subset ([None]: a single view)."""
    single, replicate_of = _single_subset(summary), replicates(summary)
    keys = []
    for replicate in sorted(replicate_of.unique()):
        seeds = sorted(summary.loc[~single & (replicate_of == replicate), "subset_seed"].unique())
        keys += [
            seed if replicate == 0 else (int(replicate), seed) for seed in [int(s) for s in seeds] or [None]
        ]
    return keys


def observed_table(view: pd.DataFrame) -> pd.DataFrame:
    """A view's configurations by (score, draw) with one draw: the observed scores (mean over the view's
    runs of a configuration; one run each)."""
    means = view.groupby(INDEX, sort=True)[SCORES].mean()
    means.columns = pd.MultiIndex.from_product([SCORES, [0]])
    return means


def draws_table(view: pd.DataFrame, draws: RunDraws) -> pd.DataFrame:
    """A view's configurations by (score, draw): each configuration's run's bootstrap draws."""
    first = next(iter(draws.values()))[SCORES[0]]
    blocks = [
        np.concatenate([draws[config_hash][score] for score in SCORES]) for config_hash in view["config_hash"]
    ]
    columns = pd.MultiIndex.from_product([SCORES, range(first.size)])
    table = pd.DataFrame(np.stack(blocks), index=pd.MultiIndex.from_frame(view[INDEX]), columns=columns)
    return table.groupby(level=INDEX, sort=True).mean()


def _select(scores: pd.DataFrame, **values) -> pd.DataFrame:
    """The configurations whose index levels equal `values` (None: any)."""
    for level, value in values.items():
        if value is not None:
            scores = scores[scores.index.get_level_values(level) == value]
    return scores


def paired_difference(table: pd.DataFrame, level: str, high, low, score: str) -> pd.DataFrame:
    """score(level == high) - score(level == low) for every configuration that has both, one column per
    draw (no rows when high is low: a study with one model size or one expert count has no comparison)."""
    scores = table[score]
    present = set(scores.index.get_level_values(level))
    if high == low or high not in present or low not in present:
        return scores.iloc[:0]
    difference = scores.xs(high, level=level) - scores.xs(low, level=level)
    return difference.dropna(how="all")


def mean_of(frame: pd.DataFrame) -> np.ndarray:
    """Per draw, the mean over rows (NaN without rows)."""
    return frame.mean(axis=0).to_numpy(dtype=float) if len(frame) else np.full(frame.shape[1], np.nan)


def share_of(condition: pd.DataFrame, defined: pd.DataFrame) -> np.ndarray:
    """Per draw, the share of defined rows where `condition` holds (NaN without rows)."""
    count = defined.sum(axis=0).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (condition & defined).sum(axis=0).to_numpy(dtype=float) / count, np.nan)


def _extremes(summary: pd.DataFrame) -> tuple[str, str]:
    """The smallest and the largest model of the study (by parameter count)."""
    order = summary.drop_duplicates("model").sort_values("parameters")["model"].tolist()
    return order[0], order[-1]


def finding_statistics(summary: pd.DataFrame) -> list[dict]:
    """One statistic per finding of the paper (and its complement where useful): `of` maps a view table
    to one value per draw; `paper` is the paper's direction (+1 / -1 against `null`, None: descriptive)."""
    smallest, largest = _extremes(summary)
    counts = sorted(summary["n_experts"].unique())
    fewest, most = counts[0], counts[-1]

    def kind_gap(score: str, model: str | None = None) -> Statistic:
        return lambda table: mean_of(
            paired_difference(_select(table, model=model), "base_kind", "it", "base", score)
        )

    def kind_share(score: str) -> Statistic:
        def statistic(table: pd.DataFrame) -> np.ndarray:
            difference = paired_difference(table, "base_kind", "it", "base", score)
            return share_of(difference > 0, difference.notna())

        return statistic

    def size_gap(score: str, base_kind: str | None = None) -> Statistic:
        return lambda table: mean_of(
            paired_difference(_select(table, base_kind=base_kind), "model", largest, smallest, score)
        )

    def size_share(score: str, base_kind: str | None = None) -> Statistic:
        def statistic(table: pd.DataFrame) -> np.ndarray:
            difference = paired_difference(
                _select(table, base_kind=base_kind), "model", largest, smallest, score
            )
            return share_of(difference > 0, difference.notna())

        return statistic

    def mean_where(score: str, model: str | None = None, base_kind: str | None = None) -> Statistic:
        return lambda table: mean_of(_select(table, model=model, base_kind=base_kind)[score])

    def share_above_one(score: str) -> Statistic:
        return lambda table: share_of(table[score] > 1, table[score].notna())

    def expert_gain(score: str, model: str, base_kind: str | None = None) -> Statistic:
        return lambda table: mean_of(
            paired_difference(
                _select(table, model=model, base_kind=base_kind), "n_experts", most, fewest, score
            )
        )

    def method_spread(
        score: str, model: str, n_experts: int | None, methods: list[str] | None = None
    ) -> Statistic:
        def statistic(table: pd.DataFrame) -> np.ndarray:
            at = _select(table, model=model, base_kind="it", n_experts=n_experts)[score]
            if methods is not None:
                at = at[at.index.get_level_values("method").isin(methods)]
            by_count = at.groupby(level="n_experts")
            spread = (by_count.max() - by_count.min()).where(by_count.count() > 1)
            return mean_of(spread)

        return statistic

    def difference(first: Statistic, second: Statistic) -> Statistic:
        return lambda table: first(table) - second(table)

    span = f"{fewest} -> {most} experts"
    models = list(dict.fromkeys([smallest, largest]))
    expert_counts = list(dict.fromkeys([most, None]))
    without_dare = [name for name in sorted(summary["method"].unique()) if name != "dare"]
    # the paper's reported changes with more experts (task arithmetic, 2 -> 8): held-in falls at 1B
    # (0.66 -> 0.39) and at 64B (1.00 -> 0.93), held-out rises at 64B (1.00 -> 1.09)
    expert_direction = {("held_in", smallest): -1, ("held_in", largest): -1, ("held_out", largest): 1}

    def entry(
        finding: int, statistic: str, of: Statistic, paper: int | None = None, null: float = 0.0
    ) -> dict:
        return {"finding": finding, "statistic": statistic, "of": of, "paper": paper, "null": null}

    return [
        entry(1, "held-in: IT base - base (mean over size, method, experts)", kind_gap("held_in"), 1),
        entry(1, "held-in: share of configurations where IT > base", kind_share("held_in")),
        entry(1, "held-out: IT base - base", kind_gap("held_out"), 1),
        entry(1, "held-out: share where IT > base", kind_share("held_out")),
        *[
            entry(1, f"{GROUP_LABELS[score]} at {model}: IT base - base", kind_gap(score, model), 1)
            for score in ("held_in", "held_out")
            for model in models
        ],
        entry(
            2, f"held-in: {largest} - {smallest} (mean over kind, method, experts)", size_gap("held_in"), 1
        ),
        entry(2, f"held-in: share where {largest} > {smallest}", size_share("held_in")),
        entry(2, f"held-out: {largest} - {smallest}", size_gap("held_out"), 1),
        *[
            entry(2, f"held-in, {KIND_LABELS[kind]}: {largest} - {smallest}", size_gap("held_in", kind), 1)
            for kind in ("base", "it")
        ],
        *[
            entry(
                2,
                f"held-in, {KIND_LABELS[kind]}: share where {largest} > {smallest}",
                size_share("held_in", kind),
            )
            for kind in ("base", "it")
        ],
        entry(3, "held-out / base zero-shot: mean over all configurations", mean_where("held_out"), 1, 1.0),
        entry(3, "held-out / base zero-shot: share of configurations > 1", share_above_one("held_out")),
        entry(
            3, f"held-out / base zero-shot: {largest}, IT base", mean_where("held_out", largest, "it"), 1, 1.0
        ),
        entry(3, "held-out / multitask: share of configurations > 1", share_above_one("held_out_multitask")),
        entry(
            3,
            f"held-out / multitask: {largest}, IT base",
            mean_where("held_out_multitask", largest, "it"),
            1,
            1.0,
        ),
        *[
            entry(
                4,
                f"{GROUP_LABELS[score]} change {span}: {model}",
                expert_gain(score, model),
                expert_direction.get((score, model)),
            )
            for score in ("held_in", "held_out")
            for model in models
        ],
        *[
            entry(
                4,
                f"{GROUP_LABELS[score]} change {span}, {KIND_LABELS[kind]}: {model}",
                expert_gain(score, model, kind),
                expert_direction.get((score, model)),
            )
            for score in ("held_in", "held_out")
            for kind in ("base", "it")
            for model in models
        ],
        *[
            entry(
                4,
                f"{GROUP_LABELS[score]} change {span}, {largest} minus {smallest} (more experts fare better at scale)",
                difference(expert_gain(score, largest), expert_gain(score, smallest)),
                1,
            )
            for score in ("held_in", "held_out")
            if largest != smallest
        ],
        *[
            entry(
                5,
                f"{GROUP_LABELS[score]} spread across {', '.join(without_dare)}, IT base, {most} experts: {model}",
                method_spread(score, model, most, without_dare),
            )
            for score in ("held_in", "held_out")
            for model in models
        ],
        *[
            entry(
                5,
                f"{GROUP_LABELS[score]} spread across methods (max - min), IT base, {label}: {model}",
                method_spread(score, model, n_experts),
            )
            for score in ("held_in", "held_out")
            for n_experts in expert_counts
            for label in [f"{most} experts" if n_experts else "mean over expert counts"]
            for model in models
        ],
        *[
            entry(
                5,
                f"{GROUP_LABELS[score]} spread across methods, IT base, mean over expert counts: "
                f"{largest} minus {smallest} (methods alike at scale)",
                difference(method_spread(score, largest, None), method_spread(score, smallest, None)),
                -1,
            )
            for score in ("held_in", "held_out")
            if largest != smallest
        ],
    ]


def findings_table(
    summary: pd.DataFrame, draws: RunDraws | None = None, bootstrap: PairedBootstrap | None = None
) -> pd.DataFrame:
    """Every finding statistic: mean over the seed views and its [min, max] (the spread across subsets);
    with the runs' bootstrap `draws`, also its 95% interval (`95ci`), the paper's direction against the
    null value (`paper`) and the verdict."""
    views = seed_views(summary)
    observed = [observed_table(view) for view in views]
    resampled = [draws_table(view, draws) for view in views] if draws is not None else None
    records = []
    for item in finding_statistics(summary):
        values = np.array([item["of"](table)[0] for table in observed], dtype=float)
        defined = values[~np.isnan(values)]
        value = float(defined.mean()) if defined.size else math.nan
        record = {
            "finding": item["finding"],
            "statistic": item["statistic"],
            "value": value,
            "min": float(defined.min()) if defined.size else math.nan,
            "max": float(defined.max()) if defined.size else math.nan,
            "views": int(defined.size),
        }
        if resampled is not None:
            per_view = np.stack([item["of"](table) for table in resampled], axis=1)
            weights = bootstrap.subset_weights(view_seeds(summary))
            interval = percentile_interval(value, subset_mean(per_view, weights))
            record["95ci"] = (
                "nan" if math.isnan(interval.low) else f"[{interval.low:.3f}, {interval.high:.3f}]"
            )
            if item["paper"] is None:
                record["paper"], record["verdict"] = "-", "-"
            else:
                null = item["null"]
                record["paper"] = f"{'>' if item['paper'] > 0 else '<'} {null:g}"
                shifted = Interval(interval.estimate - null, interval.low - null, interval.high - null)
                record["verdict"] = verdict(shifted, item["paper"])
        records.append(record)
    return pd.DataFrame(records)
