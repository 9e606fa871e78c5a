"""Normalized scores as in "What Matters": per task score / reference score, averaged per category first.

Held-in reference: the expert trained on the task's category. Held-out reference: the base's zero-shot
score (second view: the multitask baseline's).
"""

from __future__ import annotations

from collections.abc import Mapping


def normalized_scores(scores: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """score / reference per task (NaN where the reference is 0)."""
    return {
        task: (score / reference[task] if reference[task] else float("nan")) for task, score in scores.items()
    }


def category_mean(per_task: Mapping[str, float], category_of: Mapping[str, str]) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for task, value in per_task.items():
        totals.setdefault(category_of[task], []).append(value)
    return {category: sum(values) / len(values) for category, values in totals.items()}


def aggregate(per_task: Mapping[str, float], category_of: Mapping[str, str]) -> float:
    """Mean within each category, then across categories."""
    means = category_mean(per_task, category_of)
    return sum(means.values()) / len(means) if means else float("nan")
