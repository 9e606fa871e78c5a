"""Per-task evaluation: accuracy by rank classification or exact match by greedy generation.

`evaluate_task_outcome` also returns what the score averages: each evaluated example's correctness (1 or
0), its row index in the split, and, when the task data has an `entity` column, the entity it asks about,
so that confidence intervals can resample examples (or whole entities) instead of trusting one number;
and the task's chance level on those examples, for chance-corrected scores.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mergelab.eval.generate import exact_matches, greedy_generate
from mergelab.eval.rank import rank_classification

KINDS = ("classification", "generation")
METRICS_DIR = Path(__file__).parent / "metrics"
CLUSTER_COLUMN = "entity"  # examples that share a value are resampled together by the bootstrap


@dataclasses.dataclass(frozen=True)
class TaskOutcome:
    """A task's score and the per-example correctness it is the mean of."""

    score: float
    correct: list[int]  # 1 where the model's answer is right, per evaluated example
    examples: list[int]  # each example's row index in the split
    clusters: list[str] | None  # each example's entity (`CLUSTER_COLUMN`), None when the data has none
    chance: float  # expected score of a uniform random choice (mean of 1 / choices); 0 for generation


def metric_path(name: str) -> str:
    """Directory of a shipped `evaluate` metric module: `evaluate.load(metric_path("accuracy"))` works offline."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        shipped = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise KeyError(f"unknown metric '{name}'; shipped: {shipped}")
    return str(path)


def _columns(dataset, kind: str) -> None:
    needed = ["prompt", "choices", "label"] if kind == "classification" else ["prompt", "target"]
    missing = [column for column in needed if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{kind} dataset lacks columns {missing}; it has {dataset.column_names}")


def evaluate_task_outcome(
    model,
    tokenizer,
    dataset,
    kind: str,
    *,
    batch_size: int = 32,
    length_normalize: bool = False,
    max_examples: int | None = None,
    max_new_tokens: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> TaskOutcome:
    """Accuracy (kind "classification") or exact match (kind "generation") of `model` on `dataset`, in
    [0, 1], with the correctness of every evaluated example.

    `dataset` is a `datasets.Dataset` with the zoo's columns (prompt, target, choices, label; optionally
    `entity`); the first `max_examples` rows are used when given. Generation gets `max_new_tokens` = the
    longest target's token count + 1 unless given (the extra token exposes answers that run on past the
    target).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown task kind '{kind}'; valid: {list(KINDS)}")
    _columns(dataset, kind)
    if max_examples is not None and len(dataset) > max_examples:
        dataset = dataset.select(range(max_examples))
    if len(dataset) == 0:
        raise ValueError("dataset has no examples to evaluate")
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
            desc=desc or "rank",
        )
        correct = [int(p == label) for p, label in zip(predictions, list(dataset["label"]))]
        chance = sum(1 / len(options) for options in dataset["choices"]) / len(correct)
    else:
        targets = list(dataset["target"])
        if max_new_tokens is None:
            max_new_tokens = (
                max(len(ids) for ids in tokenizer(targets, add_special_tokens=False).input_ids) + 1
            )
        outputs = greedy_generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=device,
            progress=progress,
            desc=desc or "generate",
        )
        correct = exact_matches(outputs, targets)
        chance = 0.0
    clusters = (
        [str(value) for value in dataset[CLUSTER_COLUMN]] if CLUSTER_COLUMN in dataset.column_names else None
    )
    return TaskOutcome(sum(correct) / len(correct), correct, list(range(len(correct))), clusters, chance)


def evaluate_task(model, tokenizer, dataset, kind: str, **options) -> float:
    """The score of `evaluate_task_outcome` alone (same arguments)."""
    return evaluate_task_outcome(model, tokenizer, dataset, kind, **options).score


def evaluate_tasks(
    model, tokenizer, datasets: Mapping[str, tuple[object, str]], *, progress: bool = True, **options
) -> dict[str, float]:
    """`evaluate_task` over named (dataset, kind) pairs, one progress bar per task and a summary line."""
    started = time.perf_counter()
    scores = {
        name: evaluate_task(model, tokenizer, dataset, kind, progress=progress, desc=name, **options)
        for name, (dataset, kind) in datasets.items()
    }
    if progress and scores:
        mean = sum(scores.values()) / len(scores)
        tqdm.write(
            f"evaluated {len(scores)} tasks in {time.perf_counter() - started:.1f} s; mean score {mean:.3f}"
        )
    return scores
