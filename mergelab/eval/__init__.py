"""Evaluators: rank classification, greedy generation with exact match, and normalized scores."""

from mergelab.eval.generate import exact_match, exact_matches, greedy_generate, normalize_answer
from mergelab.eval.normalize import aggregate, category_mean, normalized_scores
from mergelab.eval.rank import choice_scores, rank_classification
from mergelab.eval.tasks import (
    KINDS,
    TaskOutcome,
    evaluate_task,
    evaluate_task_outcome,
    evaluate_tasks,
    metric_path,
)

__all__ = [
    "KINDS",
    "TaskOutcome",
    "aggregate",
    "category_mean",
    "choice_scores",
    "evaluate_task",
    "evaluate_task_outcome",
    "evaluate_tasks",
    "exact_match",
    "exact_matches",
    "greedy_generate",
    "metric_path",
    "normalize_answer",
    "normalized_scores",
    "rank_classification",
]
