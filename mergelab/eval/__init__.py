"""Evaluators: rank classification, greedy generation with exact match, and normalized scores."""

from mergelab.eval.generate import exact_match, greedy_generate, normalize_answer
from mergelab.eval.normalize import aggregate, category_mean, normalized_scores
from mergelab.eval.rank import choice_scores, rank_classification
from mergelab.eval.tasks import KINDS, evaluate_task, evaluate_tasks, metric_path

__all__ = [
    "KINDS",
    "aggregate",
    "category_mean",
    "choice_scores",
    "evaluate_task",
    "evaluate_tasks",
    "exact_match",
    "greedy_generate",
    "metric_path",
    "normalize_answer",
    "normalized_scores",
    "rank_classification",
]
