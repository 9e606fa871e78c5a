"""Evaluation suites: the embedded zoo's synthetic tasks (`zoo`) or the real T0 mixture (`t0`).

`eval.suite` picks one; the runner asks this module for the task specs and for each task's data, so the
rest of a run (references, normalization, rows) does not depend on where the tasks come from.
"""

from __future__ import annotations

import datasets

from mergelab.zoo.suite import TaskSuite

SUITES = ("zoo", "t0")


def load_suite(suite: str) -> TaskSuite:
    """The task specs of `suite` (the zoo's suite is built on first use)."""
    if suite == "zoo":
        from mergelab import zoo

        return zoo.load_suite()
    if suite == "t0":
        from mergelab.eval.suites import t0

        return t0.load_suite()
    raise ValueError(f"eval.suite: {suite!r} is not allowed; allowed: {', '.join(SUITES)}")


def suite_version(suite: str) -> int:
    """Version of `suite`'s task data, bumped whenever a task's examples, template or split change: results
    and cached references computed under another version are not reused."""
    if suite == "zoo":
        from mergelab.zoo.suite import SUITE_VERSION

        return SUITE_VERSION
    if suite == "t0":
        from mergelab.eval.suites import t0

        return t0.SUITE_VERSION
    raise ValueError(f"eval.suite: {suite!r} is not allowed; allowed: {', '.join(SUITES)}")


def load_task(suite: str, name: str, split: str, data_dir: str | None = None) -> datasets.Dataset:
    """One split of one task of `suite`, with columns prompt, target, choices, label."""
    if suite == "zoo":
        from mergelab import zoo

        return zoo.load_task(name, split)
    if suite == "t0":
        from mergelab.eval.suites import t0

        return t0.load_task(name, split, data_dir)
    raise ValueError(f"eval.suite: {suite!r} is not allowed; allowed: {', '.join(SUITES)}")
