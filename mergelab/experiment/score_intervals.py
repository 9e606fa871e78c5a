"""Bootstrap draws of a study's scores from the per-example correctness stored in its result rows.

A result row (one run, one task) carries, besides its scores, the correctness (1 / 0) of each evaluated
test example for the merged model (`correct`), for the row's reference model (`reference_correct`: the
category's expert held-in, the base zero-shot held-out) and for the multitask baseline
(`multitask_correct`), the examples' row indices in the split (`examples`) and, where the task's examples
ask about entities, each example's entity (`clusters`). Every model was evaluated on the same examples,
so one `PairedBootstrap` resample of a task's examples applies to the merged model and its references
alike: a draw's normalized score is (merged accuracy / reference accuracy) on the same resampled items.

A run's score in a draw is aggregated like its observed score (mean within category, then across
categories; tasks whose reference is 0 left out), and a configuration's score is the mean over its runs
weighted by the draw's resample of expert draws (`subset_keys`: the subset seed, with the expert
replicate when there are several independently fine-tuned expert sets).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mergelab.experiment import results
from mergelab.experiment.intervals import (
    Interval,
    PairedBootstrap,
    chance_corrected,
    informative_reference,
    near_chance,
    percentile_interval,
    subset_mean,
)

EXAMPLE_COLUMNS = ["examples", "correct", "reference_correct", "multitask_correct", "clusters"]
# score -> (task group, reference correctness column, "ratio" to the reference or "chance"-corrected)
SCORE_VIEWS = {
    "held_in": ("held_in", "reference_correct", "ratio"),
    "held_out": ("held_out", "reference_correct", "ratio"),
    "held_in_multitask": ("held_in", "multitask_correct", "ratio"),
    "held_out_multitask": ("held_out", "multitask_correct", "ratio"),
    "held_in_chance": ("held_in", "reference_correct", "chance"),
    "held_out_chance": ("held_out", "reference_correct", "chance"),
}
RunDraws = dict[str, dict[str, np.ndarray]]  # config hash -> score -> (draws,)


def _defined(values) -> bool:
    """Whether a list cell holds per-example values (not a missing cell)."""
    return values is not None and not (isinstance(values, float) and np.isnan(values))


def has_examples(rows: pd.DataFrame) -> bool:
    """Whether every row carries per-example correctness of the merged model and its reference."""
    return (
        not rows.empty
        and all(column in rows for column in EXAMPLE_COLUMNS)
        and bool(rows["correct"].map(_defined).all() and rows["reference_correct"].map(_defined).all())
    )


def _row_is_informative(row) -> bool:
    """Whether a row's reference is clearly above its chance level (see `informative_reference`)."""
    chance = getattr(row, "chance", np.nan)
    if chance is None or np.isnan(chance):
        return True
    values = getattr(row, "reference_correct", None)
    return informative_reference(row.reference, chance, len(values) if _defined(values) else 0)


def informative_rows(rows: pd.DataFrame) -> pd.Series:
    """Per row, whether its chance-corrected score enters the `_chance` aggregates: only tasks whose
    reference is clearly above chance do (near-chance references make the ratio noise, or flip its sign)."""
    return pd.Series([_row_is_informative(row) for row in rows.itertuples(index=False)], index=rows.index)


def task_draws(row, column: str, bootstrap: PairedBootstrap) -> np.ndarray:
    """Per draw, the accuracy in `column` (a correctness list) of one row's task; NaN when it is missing."""
    values = getattr(row, column)
    if not _defined(values):
        return np.full(bootstrap.draws, np.nan)
    clusters = row.clusters if _defined(row.clusters) else None
    return bootstrap.example_means(row.task, row.examples, values, clusters)


def _mean_over_categories(per_task: dict[str, np.ndarray], category_of: dict[str, str]) -> np.ndarray:
    """Per draw, the mean within category, then across categories (NaN tasks left out)."""
    by_category: dict[str, list[np.ndarray]] = {}
    for task, draws in per_task.items():
        by_category.setdefault(category_of[task], []).append(draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are NaN, as intended
        means = [np.nanmean(np.stack(group), axis=0) for group in by_category.values()]
        return np.nanmean(np.stack(means), axis=0)


def run_draws(run: pd.DataFrame, bootstrap: PairedBootstrap) -> dict[str, np.ndarray]:
    """Per score of `SCORE_VIEWS`, the draws of one run's aggregated score (NaN draws when the run has no
    task of that group or no such reference)."""
    tasks = []  # per row: task, group, category, chance, informative reference, {column: accuracy draws}
    for row in run.itertuples(index=False):
        columns = ("correct", "reference_correct", "multitask_correct")
        accuracies = {column: task_draws(row, column, bootstrap) for column in columns}
        tasks.append((row.task, row.group, row.category, row.chance, _row_is_informative(row), accuracies))
    scores = {}
    for score, (group, column, kind) in SCORE_VIEWS.items():
        per_task, category_of = {}, {}
        for task, row_group, category, chance, informative, accuracies in tasks:
            if row_group != group or (kind == "chance" and not informative):
                continue
            merged, reference = accuracies["correct"], accuracies[column]
            if kind == "ratio":
                with np.errstate(invalid="ignore", divide="ignore"):
                    per_task[task] = np.where(reference != 0, merged / reference, np.nan)
            else:
                per_task[task] = chance_corrected(merged, reference, chance)
            category_of[task] = category
        scores[score] = (
            _mean_over_categories(per_task, category_of) if per_task else np.full(bootstrap.draws, np.nan)
        )
    return scores


def study_run_draws(rows: pd.DataFrame, bootstrap: PairedBootstrap) -> RunDraws:
    """`run_draws` of every run of the rows (by config hash)."""
    return {
        config_hash: run_draws(run, bootstrap) for config_hash, run in rows.groupby("config_hash", sort=False)
    }


def subset_keys(runs: pd.DataFrame) -> list:
    """The expert draw of each run, the unit the bootstrap resamples beside the test examples: its subset
    seed, or (replicate, subset seed) for experts of replicate > 0 (replicate-0 runs keep their plain seed,
    so a study of the default experts resamples exactly as before replicates existed)."""
    return [
        seed if replicate == 0 else (int(replicate), seed)
        for seed, replicate in zip(runs["subset_seed"], results.replicates(runs))
    ]


def runs_mean_draws(
    runs: pd.DataFrame, draws: RunDraws, score: str, bootstrap: PairedBootstrap
) -> np.ndarray:
    """Per draw, the mean of `score` over `runs` (rows of a run summary) with each run weighted by how
    often the draw resampled its expert draw (`subset_keys`; runs that share one, e.g. variants pooled in
    one table row, share its weight; with every weight 1 this is the plain mean)."""
    stacked = np.stack([draws[config_hash][score] for config_hash in runs["config_hash"]], axis=1)
    keys = subset_keys(runs)
    distinct = list(dict.fromkeys(keys))
    weights = bootstrap.subset_weights(distinct)[:, [distinct.index(key) for key in keys]]
    return subset_mean(stacked, weights)


def interval_columns(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    draws: RunDraws,
    keys: Sequence[str],
    scores: Sequence[str],
    bootstrap: PairedBootstrap,
) -> pd.DataFrame:
    """`table` (one row per configuration `keys`, with each score's observed mean over subsets) with a
    `<score>_95ci` column beside each score: the percentile interval of its draws, as '[low, high]'."""
    table = table.copy()
    groups = dict(tuple(summary.groupby(list(keys), sort=True)))
    for score in scores:
        cells = []
        for row in table.itertuples(index=False):
            runs = groups[tuple(getattr(row, name) for name in keys)]
            interval = percentile_interval(
                getattr(row, score), runs_mean_draws(runs, draws, score, bootstrap)
            )
            cells.append("nan" if np.isnan(interval.low) else f"[{interval.low:.3f}, {interval.high:.3f}]")
        table.insert(table.columns.get_loc(score) + 1, f"{score}_95ci", cells)
    return table


def reference_table(rows: pd.DataFrame, bootstrap: PairedBootstrap) -> pd.DataFrame:
    """Every reference score of the study (per model, base kind and task: the expert held-in, the base
    zero-shot held-out) with its interval, its chance level, its bootstrap standard error and whether it
    is not clearly above chance (`near_chance`: within 2 standard errors of it, or below; scores normalized
    by it divide by noise)."""
    records = []
    for row in rows.drop_duplicates(["model", "base_kind", "task"]).itertuples(index=False):
        draws = task_draws(row, "reference_correct", bootstrap)
        interval: Interval = percentile_interval(row.reference, draws)
        error = float(np.nanstd(draws))
        records.append(
            {
                "model": row.model,
                "base_kind": row.base_kind,
                "group": row.group,
                "category": row.category,
                "task": row.task,
                "reference": row.reference,
                "reference_95ci": f"[{interval.low:.3f}, {interval.high:.3f}]",
                "chance": row.chance,
                "standard_error": error,
                "near_chance": "yes" if near_chance(row.reference, row.chance, error) else "no",
            }
        )
    return pd.DataFrame(records).sort_values(["model", "base_kind", "group", "task"], ignore_index=True)
