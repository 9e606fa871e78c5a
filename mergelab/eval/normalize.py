"""Normalized scores as in "What Matters for Model Merging at Scale?" (pure functions on plain dicts).

normalized score of a task = merged score / reference score, where the reference is, for a held-in task,
the score of the expert trained on that task's category, and for a held-out task the base model's
zero-shot score (second view: the multitask baseline's score). Scores are then averaged within each
category and the category means averaged, so a category with more tasks does not weigh more.
"""

from __future__ import annotations

from collections.abc import Mapping


def normalized_scores(scores: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """score / reference per task of `scores`; NaN where the reference is 0 (the ratio is undefined)."""
    missing = sorted(set(scores) - set(reference))
    if missing:
        raise KeyError(f"no reference score for tasks {missing}")
    return {
        task: (score / reference[task] if reference[task] else float("nan")) for task, score in scores.items()
    }


def category_mean(per_task: Mapping[str, float], category_of: Mapping[str, str]) -> dict[str, float]:
    """Mean of the per-task values within each category (categories in first-seen order)."""
    missing = sorted(set(per_task) - set(category_of))
    if missing:
        raise KeyError(f"no category for tasks {missing}")
    values: dict[str, list[float]] = {}
    for task, value in per_task.items():
        values.setdefault(category_of[task], []).append(value)
    return {category: sum(group) / len(group) for category, group in values.items()}


def aggregate(per_task: Mapping[str, float], category_of: Mapping[str, str]) -> float:
    """Mean within each category, then across categories (NaN when there are no tasks)."""
    means = category_mean(per_task, category_of)
    return sum(means.values()) / len(means) if means else float("nan")
