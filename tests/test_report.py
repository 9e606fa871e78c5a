"""Report: per-run aggregation (mean within category, then across), tables and figures from a fixture."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mergelab.experiment import report, results, score_intervals
from mergelab.experiment.intervals import PairedBootstrap
from tests.test_results import make_rows

# Two held-in categories (a: two tasks, b: one) and one held-out category.
TASKS = {
    "a1": ("a", "held_in", 0.4, 0.8),  # normalized 0.5
    "a2": ("a", "held_in", 0.9, 0.9),  # 1.0   -> category a: 0.75
    "b1": ("b", "held_in", 0.3, 0.6),  # 0.5   -> category b: 0.5 ; held-in = 0.625
    "z1": ("z", "held_out", 0.6, 0.4),  # 1.5
    "z2": ("z", "held_out", 0.2, 0.0),  # undefined (reference 0): left out -> held-out = 1.5
}


def fixture_rows() -> pd.DataFrame:
    frames = []
    for model, parameters in (("xs", 1000), ("s", 8000)):
        for method in ("ties", "average"):
            for n_experts in (2, 4):
                for seed in (0, 1):
                    tasks = dict(TASKS)
                    if method == "average":  # shift held-in so methods differ
                        tasks["b1"] = ("b", "held_in", 0.6, 0.6)
                    if seed == 1:
                        tasks["z1"] = ("z", "held_out", 0.2, 0.4)
                    config_hash = f"{model}{method}{n_experts}{seed}"
                    frames.append(
                        make_rows(
                            config_hash,
                            tasks,
                            model=model,
                            parameters=parameters,
                            method=method,
                            n_experts=n_experts,
                            subset_seed=seed,
                        )
                    )
    return pd.concat(frames, ignore_index=True)


def test_summarize_runs_means_within_category_then_across():
    summary = report.summarize_runs(fixture_rows())
    assert len(summary) == 16
    run = summary[summary["config_hash"] == "xsties20"].iloc[0]
    assert run["held_in"] == pytest.approx((0.75 + 0.5) / 2)
    assert run["held_out"] == pytest.approx(1.5)
    assert math.isnan(run["held_in_multitask"])
    average = summary[summary["config_hash"] == "xsaverage21"].iloc[0]
    assert average["held_in"] == pytest.approx((0.75 + 1.0) / 2)
    assert average["held_out"] == pytest.approx(0.5)


def test_study_table_averages_over_expert_subsets():
    table = report.study_table(report.summarize_runs(fixture_rows()))
    assert len(table) == 2 * 2 * 2
    row = table[(table["model"] == "s") & (table["method"] == "ties") & (table["n_experts"] == 4)].iloc[0]
    assert row["held_out"] == pytest.approx((1.5 + 0.5) / 2) and row["subsets"] == 2
    markdown = report.to_markdown(table)
    lines = markdown.splitlines()
    assert lines[0].startswith("| model | parameters | base_kind | method | n_experts | held_in |")
    assert len(lines) == 2 + len(table) and "| 1.000 |" in markdown


def test_one_size_study_draws_no_size_figure(tmp_path):
    rows = fixture_rows()
    paths = report.write_report(rows[rows["model"] == "xs"], tmp_path)
    assert "normalized_vs_size.png" not in {path.name for path in paths}


def test_report_command_reads_the_study_fragments(tmp_path, capsys):
    rows = fixture_rows().assign(study="micro_smoke")
    for config_hash, run in rows.groupby("config_hash"):
        results.write_fragment(run, results.fragment_path("micro_smoke", config_hash, tmp_path))
    assert report.main(["experiment=micro_smoke", f"results_dir={tmp_path}"]) == 0
    out_dir = tmp_path / "micro_smoke"
    written = {
        Path(line.removeprefix("wrote "))
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("wrote ")
    }
    names = ["normalized_vs_experts.png", "normalized_vs_size.png", "rows.parquet", "summary.md"]
    assert written == {out_dir / name for name in names}
    for path in written:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def ordered(frame):
        return frame.sort_values(["config_hash", "task"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(ordered(results.read_fragment(out_dir / "rows.parquet")), ordered(rows))
    assert "| xs | 1000 | base | average | 2 |" in (out_dir / "summary.md").read_text()
    assert report.main(["experiment=default_study", f"results_dir={tmp_path}"]) == 1
    assert "no results for study 'default_study'" in capsys.readouterr().err


def test_settings_of_one_configuration_get_their_own_rows_and_selected_runs_pool():
    frames = []
    for seed, density in ((0, 0.2), (1, 0.2), (0, 1.0)):
        frames.append(
            make_rows(
                f"fixed{seed}{density}", TASKS, subset_seed=seed, hyperparameters=f'{{"density": {density}}}'
            )
        )
    for seed, scale in ((0, 0.8), (1, 1.5)):  # selection picked different values: still one configuration
        frames.append(
            make_rows(
                f"selected{seed}",
                TASKS,
                method="average",
                subset_seed=seed,
                selection="validation",
                hyperparameters=f'{{"scale": {scale}}}',
            )
        )
    table = report.study_table(report.summarize_runs(pd.concat(frames, ignore_index=True)))
    assert list(zip(table["method"], table["variant"], table["subsets"])) == [
        ("average", "select=validation", 2),
        ("ties", '{"density": 0.2}', 2),
        ("ties", '{"density": 1.0}', 1),
    ]


def with_examples(rows: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The rows with per-example correctness whose means are the rows' scores (n examples per task)."""

    def correct(score: float) -> list[int]:
        ones = round(score * n)
        return [1] * ones + [0] * (n - ones)

    return rows.assign(
        chance=0.25,
        chance_corrected=(rows["value"] - 0.25) / (rows["reference"] - 0.25),
        examples=[list(range(n))] * len(rows),
        correct=[correct(value) for value in rows["value"]],
        reference_correct=[correct(value) for value in rows["reference"]],
        multitask_correct=None,
        clusters=None,
    )


def test_summary_gets_intervals_and_flags_references_only_with_per_example_rows():
    rows = fixture_rows()
    summary = report.summarize_runs(rows)
    plain = report.summary_markdown(rows, summary)
    assert "_95ci" not in plain and "References" not in plain and "_chance" not in plain
    rows = with_examples(rows)
    summary = report.summarize_runs(rows)
    text = report.summary_markdown(rows, summary)
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert "| held_in | held_in_95ci | held_out | held_out_95ci |" in header
    # no held-out reference is clear of chance on 20 examples (see the next test): no held_out_chance
    assert "| held_in_chance | held_in_chance_95ci | subsets |" in header
    # z2's reference is 0, below chance 0.25; a2's (0.9 on 20 examples) is clearly above it
    references = score_intervals.reference_table(rows, PairedBootstrap(draws=200))
    flags = references.drop_duplicates("task").set_index("task")["near_chance"]
    assert flags["z2"] == "yes" and flags["a2"] == "no"
    # one run's chance-corrected held-in: a1 (0.4-0.25)/(0.8-0.25), a2 1, b1 (0.3-0.25)/(0.6-0.25)
    expected = ((0.15 / 0.55 + 1.0) / 2 + 0.05 / 0.35) / 2
    assert summary["held_in_chance"].iloc[0] == pytest.approx(expected)


def test_chance_corrected_aggregates_leave_out_references_near_chance():
    """z1's reference 0.4 is 0.15 above chance 0.25, within 2 binomial standard errors on 20 examples
    (2 x sqrt(0.4 x 0.6 / 20) = 0.22), and z2's is below chance: neither enters held_out_chance; on 200
    examples z1's (standard error 0.035) does, and the aggregate is its chance-corrected score."""
    rows = with_examples(fixture_rows())
    first = rows[rows["config_hash"] == "xsties20"]
    assert list(score_intervals.informative_rows(first)) == [True, True, True, False, False]
    assert math.isnan(report.summarize_runs(first)["held_out_chance"].iloc[0])
    larger = with_examples(fixture_rows(), n=200)
    run = report.summarize_runs(larger[larger["config_hash"] == "xsties20"]).iloc[0]
    assert run["held_out_chance"] == pytest.approx((0.6 - 0.25) / (0.4 - 0.25))
    assert run["held_out"] == pytest.approx(1.5)  # the ratio view keeps every task with a defined ratio


def test_figures_are_the_same_on_every_run(tmp_path):
    """The error bands are bootstrapped: seeded, a report drawn twice from the same rows gives the same
    bytes (unseeded, every `mergelab report` redrew them differently)."""
    base = report.summarize_runs(fixture_rows())
    noise = np.random.default_rng(0)
    summary = pd.concat(
        [
            base.assign(
                subset_seed=seed,
                held_in=base["held_in"] + noise.normal(0, 0.1, len(base)),
                held_out=base["held_out"] + noise.normal(0, 0.1, len(base)),
            )
            for seed in range(6)
        ],
        ignore_index=True,
    )
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = report.draw_figures(summary, tmp_path / "first")
    second = report.draw_figures(summary, tmp_path / "second")
    assert [path.name for path in first] == [path.name for path in second] and first
    assert all(one.read_bytes() == two.read_bytes() for one, two in zip(first, second))
