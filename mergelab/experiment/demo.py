"""The default job of `make run`: build the smallest zoo size if missing (two components at a time where
there are two cores), run the default study, report it.

The study (conf/experiment/default_study.yaml) merges 2, 4 and 8 experts from the base and from the
instruction-tuned base with average, task arithmetic, TIES and DARE at their paper defaults, evaluates
held-in and held-out tasks, and prints the normalized-score table and where its figures are.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mergelab import zoo
from mergelab.experiment import report, runner
from mergelab.experiment.sweep import compose

STUDY = "default_study"


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    config = compose([f"experiment={STUDY}", *argv])
    zoo.build(config.model.size, device="auto", jobs=min(2, os.cpu_count() or 1))
    rows = runner.run_study(STUDY, argv)
    paths = report.write_report(rows, Path(config.results_dir) / STUDY, config.report)
    report.print_summary(rows)
    for path in paths:
        print(f"wrote {path}")
    figures = [path for path in paths if path.suffix == ".png"]
    print(
        f"default study: {rows['run_id'].nunique()} runs in {time.perf_counter() - started:.0f} s; "
        f"figure: {figures[0] if figures else 'none'}"
    )
    return 0
