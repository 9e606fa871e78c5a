"""Evaluators: rank classification, greedy generation with exact match, and normalized scores."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mergelab.eval.generate import exact_match, greedy_generate
from mergelab.eval.normalize import aggregate, category_mean, normalized_scores
from mergelab.eval.rank import choice_scores, rank_classification

__all__ = [
    "aggregate",
    "category_mean",
    "choice_scores",
    "evaluate_task",
    "evaluate_tasks",
    "exact_match",
    "greedy_generate",
    "metric_path",
    "normalized_scores",
    "rank_classification",
]


def metric_path(name: str) -> str:
    """Directory of a shipped `evaluate` metric module, for `evaluate.load(metric_path("accuracy"))`."""
    path = Path(__file__).parent / "metrics" / name
    if not path.is_dir():
        raise KeyError(f"unknown metric '{name}'; shipped: {sorted(p.name for p in path.parent.iterdir())}")
    return str(path)


def evaluate_task(
    model,
    tokenizer,
    dataset,
    kind: str,
    *,
    batch_size: int = 64,
    length_normalize: bool = False,
    max_examples: int | None = None,
    device=None,
    progress: bool = False,
) -> float:
    """Accuracy (classification, by rank classification) or exact match (generation) on `dataset`."""
    if max_examples is not None and len(dataset) > max_examples:
        dataset = dataset.select(range(max_examples))
    prompts = list(dataset["prompt"])
    if kind == "classification":
        predictions = rank_classification(
            model,
            tokenizer,
            prompts,
            list(dataset["choices"]),
            batch_size=batch_size,
            length_normalize=length_normalize,
            device=device,
            progress=progress,
        )
        labels = list(dataset["label"])
        return sum(int(p == label) for p, label in zip(predictions, labels)) / len(labels)
    targets = list(dataset["target"])
    max_new_tokens = max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in targets) + 1
    outputs = greedy_generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    return exact_match(outputs, targets)


def evaluate_tasks(model, tokenizer, datasets: Mapping[str, tuple], **options) -> dict[str, float]:
    """`evaluate_task` over named (dataset, kind) pairs."""
    return {
        name: evaluate_task(model, tokenizer, dataset, kind, **options)
        for name, (dataset, kind) in datasets.items()
    }
