"""The task suite on disk: one `datasets.DatasetDict` per task plus `suite.json` describing them."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from mergelab.zoo.cache import atomic_directory, zoo_home
from mergelab.zoo.tasks import SPLIT_SIZES, TaskSpec, generate_split, task_definitions
from mergelab.zoo.world import corpus, make_world

SUITE_SEED = 0
SUITE_VERSION = 9
CORPUS_LINES = {"train": 50_000, "validation": 2_000}


@dataclass(frozen=True)
class TaskSuite:
    """Every task's spec, and the held-in / held-out categories in a fixed order."""

    tasks: dict[str, TaskSpec]

    def group(self, group: str) -> list[str]:
        return [name for name, spec in self.tasks.items() if spec.group == group]

    def categories(self, group: str) -> list[str]:
        return list(dict.fromkeys(self.tasks[name].category for name in self.group(group)))

    @property
    def held_in_categories(self) -> list[str]:
        return self.categories("held_in")

    @property
    def held_out_categories(self) -> list[str]:
        return self.categories("held_out")

    def tasks_in(self, category: str) -> list[str]:
        return [name for name, spec in self.tasks.items() if spec.category == category]

    def category_of(self) -> dict[str, str]:
        return {name: spec.category for name, spec in self.tasks.items()}


def suite_dir() -> Path:
    return zoo_home() / "suite"


def build_suite(seed: int = SUITE_SEED) -> Path:
    """Generate and save the suite (idempotent: an intact suite is kept)."""
    target = suite_dir()
    if _suite_ok(target):
        return target
    shutil.rmtree(target, ignore_errors=True)
    world = make_world(seed)
    with atomic_directory(target) as staging:
        for definition in task_definitions():
            splits = {
                split: datasets.Dataset.from_dict(generate_split(definition, world, split, seed))
                for split in SPLIT_SIZES
            }
            datasets.DatasetDict(splits).save_to_disk(str(staging / definition.spec.name))
        (staging / "corpus_train.txt").write_text(
            "\n".join(corpus(world, CORPUS_LINES["train"], seed)) + "\n"
        )
        (staging / "corpus_validation.txt").write_text(
            "\n".join(corpus(world, CORPUS_LINES["validation"], seed + 1)) + "\n"
        )
        specs = {d.spec.name: asdict(d.spec) for d in task_definitions()}
        (staging / "suite.json").write_text(
            json.dumps({"version": SUITE_VERSION, "seed": seed, "tasks": specs})
        )
    return target


def _suite_ok(target: Path) -> bool:
    try:
        meta = json.loads((target / "suite.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("version") == SUITE_VERSION and all((target / name).is_dir() for name in meta["tasks"])


def load_suite() -> TaskSuite:
    """The suite's task specs (building the suite first if it is missing)."""
    meta = json.loads((build_suite() / "suite.json").read_text())
    return TaskSuite({name: TaskSpec(**spec) for name, spec in meta["tasks"].items()})


def load_task(name: str, split: str) -> datasets.Dataset:
    """One split of one task: columns prompt, target, choices, label, template."""
    path = build_suite() / name
    if not path.is_dir():
        raise KeyError(f"unknown zoo task '{name}'")
    return datasets.load_from_disk(str(path))[split]


def corpus_lines(split: str) -> list[str]:
    return (build_suite() / f"corpus_{split}.txt").read_text().splitlines()
