"""The examples a per-expert statistic is computed on, named by a short data spec.

A data spec is one string per expert:

- `zoo:<category>`: the given split of every task of that held-in category of the embedded zoo (the data the
  zoo's expert for the category was fine-tuned on), tasks in suite order;
- `zoo:<task>`: one zoo task;
- a path to a directory written by `datasets.save_to_disk` (a `Dataset`, or a `DatasetDict` whose `split`
  is used) with the zoo's columns: `prompt`, `target`, and for classification `choices` and `label`.

When more examples are available than requested, a seeded random subset is taken (same seed, same subset).
The fingerprint hashes the chosen examples' text, so a statistic cache entry changes whenever the data does.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergelab.methods.base import MergeConfigError

ZOO_PREFIX = "zoo:"


class StatisticDataError(MergeConfigError):
    """A data spec that names no usable examples; the message names the spec at fault."""


@dataclass(frozen=True)
class Example:
    """One training example: the prompt, the answer text, and for classification the choices and label.

    `choices` is empty (and `label` -1) for generation examples.
    """

    prompt: str
    target: str
    choices: tuple[str, ...] = ()
    label: int = -1

    @property
    def is_classification(self) -> bool:
        return bool(self.choices)


@dataclass(frozen=True)
class ExampleSet:
    """The examples of one data spec, with what identifies them in a statistic cache key."""

    spec: str
    split: str
    examples: tuple[Example, ...]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the examples' text, in order."""
        digest = hashlib.sha256()
        for example in self.examples:
            row = [example.prompt, example.target, list(example.choices), example.label]
            digest.update(json.dumps(row).encode())
        return digest.hexdigest()


def _rows_to_examples(dataset, where: str) -> list[Example]:
    columns = set(dataset.column_names)
    missing = sorted({"prompt", "target"} - columns)
    if missing:
        raise StatisticDataError(f"{where}: lacks column(s) {missing}; it has {sorted(columns)}")
    has_choices = {"choices", "label"} <= columns
    examples = []
    for index, row in enumerate(dataset):
        choices = tuple(row["choices"]) if has_choices and row["choices"] else ()
        label = int(row["label"]) if choices else -1
        if choices and not 0 <= label < len(choices):
            raise StatisticDataError(f"{where}: example {index} has label {label} for {len(choices)} choices")
        examples.append(Example(row["prompt"], row["target"], choices, label))
    return examples


def _zoo_examples(name: str, split: str, spec: str) -> list[Example]:
    from mergelab import zoo

    suite = zoo.load_suite()
    tasks = suite.tasks_in(name) if name not in suite.tasks else [name]
    if not tasks:
        valid = sorted({*suite.held_in_categories, *suite.tasks})
        raise StatisticDataError(f"data spec '{spec}': no zoo category or task '{name}'; valid: {valid}")
    examples: list[Example] = []
    for task in tasks:
        examples += _rows_to_examples(zoo.load_task(task, split), f"zoo task '{task}' ({split})")
    return examples


def _disk_examples(path: Path, split: str, spec: str) -> list[Example]:
    import datasets

    if not path.is_dir():
        raise StatisticDataError(
            f"data spec '{spec}': not a directory written by datasets.save_to_disk, nor 'zoo:<category>'"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise StatisticDataError(f"data spec '{spec}': cannot load a dataset ({error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise StatisticDataError(f"data spec '{spec}': no split '{split}'; it has {sorted(loaded)}")
        loaded = loaded[split]
    return _rows_to_examples(loaded, f"dataset {path}")


def load_examples(spec: str, n_examples: int, seed: int = 0, split: str = "train") -> ExampleSet:
    """Up to `n_examples` examples of `spec` (all when fewer exist; a seeded random subset otherwise)."""
    if n_examples < 1:
        raise StatisticDataError(f"n_examples must be >= 1, got {n_examples}")
    if spec.startswith(ZOO_PREFIX):
        examples = _zoo_examples(spec[len(ZOO_PREFIX) :], split, spec)
    else:
        examples = _disk_examples(Path(spec).expanduser(), split, spec)
    if not examples:
        raise StatisticDataError(f"data spec '{spec}': split '{split}' has no examples")
    if len(examples) > n_examples:
        chosen = random.Random(seed).sample(range(len(examples)), n_examples)
        examples = [examples[index] for index in chosen]
    return ExampleSet(spec, split, tuple(examples))


def check_data_specs(specs: Sequence[str] | None, n_experts: int, method: str) -> list[str]:
    """One data spec per expert, or an error saying what `method` needs."""
    if specs is None or len(specs) == 0:
        raise StatisticDataError(
            f"method '{method}' computes statistics on each expert's training data: give one data spec per "
            "expert, e.g. data=[zoo:color,zoo:place] or data=[/data/task_a,/data/task_b] "
            "(directories written by datasets.save_to_disk)"
        )
    if isinstance(specs, str) or len(specs) != n_experts:
        count = 1 if isinstance(specs, str) else len(specs)
        raise StatisticDataError(f"data has {count} spec(s) for {n_experts} experts; give one per expert")
    return [str(spec) for spec in specs]
