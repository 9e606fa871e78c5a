"""Task scores of a model, and cached reference scores (experts, base zero-shot, multitask baseline).

Normalization needs, for every evaluated task, the score of a reference model on the same split with the
same evaluation settings. Those scores do not depend on the merge, so they are computed once and cached as
small JSON files under `<results_dir>/_references/<model fingerprint>/<split>-<settings>/<task>.json`; the
fingerprint is the zoo manifest's weight digest (or the model path for models outside the zoo), so a
rebuilt zoo never reuses stale references. Each file holds the score and the per-example correctness it
averages (for confidence intervals; a file without it, written before, is evaluated again) and is written
atomically, so parallel sweep workers may fill the cache concurrently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mergelab.engine.models import load_model, load_tokenizer
from mergelab.eval import suites
from mergelab.eval.tasks import TaskOutcome
from mergelab.experiment.config import EvalConfig

METRIC_OF_KIND = {"classification": "accuracy", "generation": "exact_match"}


def task_outcomes(
    model,
    tokenizer,
    tasks: Mapping[str, str],
    split: str,
    settings: EvalConfig,
    *,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, TaskOutcome]:
    """Accuracy / exact match of `model` on each task (name -> kind) of the `settings.suite` suite, with
    the per-example correctness behind it."""
    from mergelab import eval as ml_eval

    outcomes = {}
    for name in tqdm(list(tasks), desc=desc, disable=not progress, leave=False):
        outcomes[name] = ml_eval.evaluate_task_outcome(
            model,
            tokenizer,
            suites.load_task(settings.suite, name, split, settings.data_dir),
            tasks[name],
            batch_size=settings.batch_size,
            length_normalize=settings.length_normalize,
            max_examples=settings.max_examples,
            progress=False,
        )
    return outcomes


def score_tasks(
    model, tokenizer, tasks: Mapping[str, str], split: str, settings: EvalConfig, **options
) -> dict[str, float]:
    """The scores of `task_outcomes` alone (same arguments)."""
    return {
        name: outcome.score
        for name, outcome in task_outcomes(model, tokenizer, tasks, split, settings, **options).items()
    }


def model_fingerprint(path: str | Path) -> str:
    """Identity of a model's weights: the zoo manifest digest when present, else its path."""
    manifest = Path(path) / "manifest.json"
    try:
        identity = json.loads(manifest.read_text())["sha256"]
    except (OSError, KeyError, json.JSONDecodeError):
        identity = str(Path(path).resolve()) if Path(path).exists() else str(path)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def models_fingerprint(paths: Sequence[str | Path]) -> str:
    """Identity of several models' weights together (`model_fingerprint` of each, in order)."""
    return hashlib.sha256("/".join(model_fingerprint(path) for path in paths).encode()).hexdigest()[:16]


class ReferenceCache:
    """Reference scores per (model, split, evaluation settings, task), computed on first use."""

    def __init__(self, results_dir: str | Path, settings: EvalConfig, device: torch.device, progress: bool):
        self.root = Path(results_dir) / "_references"
        self.settings = settings
        self.device = device
        self.progress = progress
        self.seconds = 0.0

    def _file(self, model_path: str | Path, split: str, task: str) -> Path:
        options = f"{split}-n{self.settings.max_examples}-ln{int(self.settings.length_normalize)}"
        # a rebuilt suite may change a task's examples under its name
        options += f"-{self.settings.suite}{suites.suite_version(self.settings.suite)}"
        if self.settings.suite == "t0":
            from mergelab.eval.suites import t0

            options += f"-{hashlib.sha256(str(t0.data_dir(self.settings.data_dir)).encode()).hexdigest()[:8]}"
        return self.root / model_fingerprint(model_path) / options / f"{task}.json"

    def outcomes(
        self, model_path: str | Path, tasks: Mapping[str, str], split: str
    ) -> dict[str, TaskOutcome]:
        """Outcomes of the model at `model_path` on `tasks` (name -> kind), evaluating only uncached ones."""
        cached: dict[str, TaskOutcome] = {}
        for task in tasks:
            try:
                record = json.loads(self._file(model_path, split, task).read_text())
                cached[task] = TaskOutcome(
                    record["value"],
                    record["correct"],
                    record["examples"],
                    record["clusters"],
                    record["chance"],
                )
            except (OSError, KeyError, json.JSONDecodeError):
                pass
        missing = {task: kind for task, kind in tasks.items() if task not in cached}
        if missing:
            started = time.perf_counter()
            model = load_model(model_path, self.device)
            tokenizer = load_tokenizer(model_path)
            fresh = task_outcomes(
                model,
                tokenizer,
                missing,
                split,
                self.settings,
                progress=self.progress,
                desc=f"reference {Path(model_path).name}",
            )
            for task, outcome in fresh.items():
                record = {"value": outcome.score, "model": str(model_path), **dataclasses.asdict(outcome)}
                del record["score"]
                self._write(self._file(model_path, split, task), record)
            cached |= fresh
            del model
            self.seconds += time.perf_counter() - started
        return {task: cached[task] for task in tasks}

    def scores(self, model_path: str | Path, tasks: Mapping[str, str], split: str) -> dict[str, float]:
        """The scores of `outcomes` alone."""
        return {task: outcome.score for task, outcome in self.outcomes(model_path, tasks, split).items()}

    @staticmethod
    def _write(path: Path, record: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)
