"""lm-evaluation-harness tasks on a model mergelab loaded itself (the `lm_eval` extra).

The harness is driven through its Python API: `lm_eval.simple_evaluate` with an `HFLM` that wraps the
already loaded `transformers` model and tokenizer, so the checkpoint is read once, by mergelab, and custom
tasks (YAML files with local data, e.g. `dataset_path: json` with `data_files`) run offline from
`include_path`. Every metric the harness reports becomes one score (stderr entries are left out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mergelab.experiment.config import ConfigError

PREFIX = "lm_eval:"


@dataclass(frozen=True)
class HarnessScore:
    """One metric of one harness task: `metric` is the harness's name, `/filter` appended unless `none`."""

    task: str
    metric: str
    value: float
    split: str


def _harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ConfigError(
            f"tasks: lm_eval tasks need lm-evaluation-harness, the lm_eval extra: "
            f"pip install 'mergelab[lm_eval]' ({error})"
        ) from None
    return lm_eval, HFLM, TaskManager


def harness_scores(
    model,
    tokenizer,
    tasks: Sequence[str],
    device: torch.device,
    *,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> list[HarnessScore]:
    """Scores of `model` on the harness tasks `tasks` (their plain names); unknown names are a ConfigError."""
    lm_eval, hflm, task_manager_class = _harness()
    task_manager = task_manager_class(include_path=include_path)
    unknown = [task for task in tasks if task not in task_manager.all_tasks]
    if unknown:
        where = (
            f" (nor in include_path={include_path})" if include_path else " (add yours with include_path=DIR)"
        )
        raise ConfigError(
            f"tasks: {', '.join(PREFIX + task for task in unknown)} not known to lm_eval{where}"
        )
    wrapped = hflm(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    output = lm_eval.simple_evaluate(
        model=wrapped,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        log_samples=False,
        bootstrap_iters=0,
    )
    scores = []
    for task, metrics in output["results"].items():
        config = output.get("configs", {}).get(task, {})
        split = config.get("test_split") or config.get("validation_split") or ""
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            name = metric if filter_name == "none" else f"{metric}/{filter_name}"
            scores.append(HarnessScore(task, name, float(value), split))
    return scores
