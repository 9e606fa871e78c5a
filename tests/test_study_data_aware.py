"""experiments/data_aware: each committed report regenerates from its committed table (no model runs), the
tables hold the methods / budgets the README reports, and the study analyses compute what they claim."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mergelab.experiment import report
from mergelab.experiment.config import ReportConfig
from mergelab.studies.data_aware import decode_runs, spread

RESULTS = Path(__file__).resolve().parent.parent / "results"
METHODS = {"average", "task_arithmetic", "ties", "fisher", "regmean", "pleas"}
EXPECTED = {  # study -> (methods, PLeaS budgets, files its report writes besides rows / summary / runs)
    "data_aware_shared": (METHODS, {1.0}, ["methods.md", "methods.png"]),
    "data_aware_different": (METHODS, {1.0}, ["methods.md", "methods.png"]),
    "data_aware_budget": ({"pleas"}, {1.0, 1.25, 1.5, 2.0}, ["budget.md", "budget.png"]),
}


@pytest.mark.parametrize("study", sorted(EXPECTED))
def test_committed_report_regenerates(study: str, tmp_path: Path) -> None:
    committed = RESULTS / study
    rows = pd.read_parquet(committed / "rows.parquet")
    methods, budgets, extra = EXPECTED[study]
    assert set(rows["study"]) == {study}
    assert set(rows["method"]) == methods
    assert set(rows["model"]) == {"xs"} and set(rows["n_experts"]) == {2}
    pleas = rows[rows["method"] == "pleas"]
    assert {json.loads(text)["budget"] for text in pleas["hyperparameters"]} == budgets
    per_setting = rows.groupby(["method", "hyperparameters"])["subset_seed"].unique()
    assert all(sorted(seeds) == [0, 1, 2] for seeds in per_setting), per_setting

    extension = ReportConfig(extension="mergelab.studies.data_aware:write_data_aware_report", options={})
    paths = report.write_report(rows, tmp_path, extension)
    names = {path.name for path in paths}
    assert {"rows.parquet", "summary.md", "runs.md", *extra} <= names
    for name in names:
        assert (tmp_path / name).stat().st_size > 0
        if name.endswith(".md"):
            assert (tmp_path / name).read_text() == (committed / name).read_text(), name
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
            assert (committed / name).is_file()


def _rows(config_hash: str, values: dict[str, tuple[str, float, float]]) -> list[dict]:
    return [
        {
            "config_hash": config_hash,
            "task": task,
            "category": category,
            "group": "held_in",
            "value": value,
            "reference": reference,
        }
        for task, (category, value, reference) in values.items()
    ]


def test_decode_runs_averages_raw_scores_within_then_across_categories() -> None:
    rows = pd.DataFrame(
        _rows(
            "a",
            {
                "add_digits": ("c1", 0.2, 1.0),
                "reverse_words": ("c1", 0.4, 0.8),
                "bigger_digit": ("c2", 0.9, 0.5),
            },
        )
        + _rows("b", {"add_digits": ("c1", 0.0, 1.0)})
    )
    summary = pd.DataFrame(
        {
            "config_hash": ["a", "b"],
            "hyperparameters": [json.dumps({"budget": 1.5}), json.dumps({"scale": 0.4})],
        }
    )
    runs = decode_runs(rows, summary)
    # run a: category c1 mean (0.2 + 0.4) / 2 = 0.3, c2 0.9 -> 0.6; references (0.9 + 0.5) / 2 = 0.7
    assert runs["held_in_raw"].tolist() == pytest.approx([0.6, 0.0])
    assert runs["expert_raw"].tolist() == pytest.approx([0.7, 1.0])
    # chance (results/zoo/README.md): generation tasks 0, the two-choice bigger_digit 0.5 -> (0 + 0.5) / 2
    assert runs["chance_raw"].tolist() == pytest.approx([0.25, 0.0])
    assert runs["budget"].iloc[0] == 1.5 and math.isnan(runs["budget"].iloc[1])


def test_spread_gives_mean_min_max_per_group() -> None:
    runs = pd.DataFrame(
        {
            "method": ["x", "x", "x", "y"],
            "held_in": [0.1, 0.4, 0.7, 0.5],
            "held_out": [1.0, 1.0, 1.0, math.nan],
            "held_in_raw": [0.2, 0.2, 0.2, 0.3],
            "expert_raw": [0.5, 0.5, 0.5, 0.6],
            "chance_raw": [0.25, 0.25, 0.25, 0.3],
        }
    )
    table = spread(runs, "method").set_index("method")
    assert table.loc["x", "subsets"] == 3 and table.loc["y", "subsets"] == 1
    assert table.loc["x", "held_in"] == "0.400 [0.100, 0.700]"
    assert table.loc["y", "held_out"] == "nan"
