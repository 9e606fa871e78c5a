"""experiments/ties: the micro-zoo study reproduces its committed golden numbers, and every committed
`results/ties_*` table regenerates its report (tables and figures) with `mergelab report`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mergelab.experiment import report, results, runner
from tests.zoo_fixture import require_golden_micro_zoo

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Normalized scores are averages of 8-example accuracies: a changed answer moves one by >= 1/64. CPU runs
# are deterministic, so the tolerance only absorbs floating-point summation order across machines.
GOLDEN_TOLERANCE = 1e-6
FAST = ["progress=false", "device=cpu"]
STUDY_OVERLAYS = {  # committed study -> the experiment overlay whose report regenerates it
    "ties_methods": "ties_methods",
    "ties_ablation": "ties_ablation",
    "ties_sensitivity": "ties_density",
    "ties_micro": "ties_micro",
}


def scores_by_configuration(rows: pd.DataFrame) -> pd.DataFrame:
    """Held-in / held-out per (method, selection, hyperparameters), independent of config hashes."""
    summary = report.summarize_runs(rows)
    keys = ["method", "selection", "hyperparameters"]
    return summary.set_index(keys)[["held_in", "held_out"]].sort_index()


def test_micro_study_matches_the_committed_golden_numbers(micro_zoo, tmp_path, single_torch_thread):
    require_golden_micro_zoo(micro_zoo)
    committed_path = RESULTS / "ties_micro" / "rows.parquet"
    assert committed_path.is_file(), "regenerate with the commands in experiments/ties/README.md"
    for experiment in ("ties_micro", "ties_micro_ablation"):
        runner.run_study(experiment, [f"results_dir={tmp_path}", *FAST])
    fresh = scores_by_configuration(results.load("ties_micro", tmp_path))
    committed = scores_by_configuration(results.read_fragment(committed_path))
    assert list(fresh.index) == list(committed.index)
    pd.testing.assert_frame_equal(fresh, committed, check_exact=False, atol=GOLDEN_TOLERANCE, rtol=0)
    variants = {(method, selection) for method, selection, _ in fresh.index}
    assert ("ties", "validation") in variants and ("average", "none") in variants
    assert len(fresh) == 14  # 8 method runs + 8 ablation runs, 2 of them the same configuration


@pytest.mark.parametrize("study", sorted(STUDY_OVERLAYS))
def test_committed_study_regenerates_its_report(study, tmp_path):
    committed = RESULTS / study
    assert (committed / "rows.parquet").is_file(), f"results/{study}/rows.parquet is not committed"
    fragments = tmp_path / study / "fragments"
    fragments.mkdir(parents=True)
    shutil.copy(committed / "rows.parquet", fragments / "committed.parquet")
    if (committed / "sign_conflicts.csv").is_file():  # computed from the zoo; the report only draws it
        shutil.copy(committed / "sign_conflicts.csv", tmp_path / study / "sign_conflicts.csv")
    assert report.main([f"experiment={STUDY_OVERLAYS[study]}", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / study
    for name in ("summary.md", "runs.md", "normalized_vs_experts.png"):
        assert (out / name).stat().st_size > 0, name
    committed_files = {path.name for path in committed.iterdir() if path.is_file()}
    for name in committed_files:
        assert (out / name).is_file(), f"{name} was not regenerated"
        if name.endswith(".md"):
            assert (out / name).read_text() == (committed / name).read_text(), name
