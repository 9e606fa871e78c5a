"""experiments/merging_at_scale: the findings statistics on hand-made tables, the micro-zoo study against its
committed golden numbers (with the validation search shared across subsets), and the committed study
tables regenerating their reports (tables and figures) with `mergelab report`."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mergelab.experiment import report, results, runner
from mergelab.experiment.config import ConfigError, validate
from mergelab.experiment.intervals import PairedBootstrap
from mergelab.experiment.sweep import compose
from mergelab.studies import merging_at_scale as study
from mergelab.studies import merging_at_scale_findings as findings_module
from tests.test_results import make_rows
from tests.zoo_fixture import require_golden_micro_zoo

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Normalized scores are averages of 8-example accuracies: a changed answer moves one by >= 1/64. CPU runs
# are deterministic, so the tolerance only absorbs floating-point summation order across machines.
GOLDEN_TOLERANCE = 1e-6
FIGURES = ("scale_vs_size.png", "scale_vs_experts.png", "scale_vs_multitask.png")


def synthetic_summary() -> pd.DataFrame:
    """Runs whose scores follow a known formula: IT +0.10 held-in, the larger model +0.05 held-in, method
    b 0.03 (xs) / 0.01 (s) below a held-in, 8 experts +0.2 held-out, and seed 1 +0.1 held-out on s at
    2 experts (the only subset-dependent effect). Two subsets at 2 experts, one at 8."""
    records = []
    for model, parameters in (("xs", 100), ("s", 800)):
        for kind in ("base", "it"):
            for method in ("a", "b"):
                for n_experts, seeds in ((2, (0, 1)), (8, (0,))):
                    for seed in seeds:
                        held_in = 0.5 + 0.1 * (kind == "it") + 0.05 * (model == "s")
                        held_in -= (0.03 if model == "xs" else 0.01) * (method == "b")
                        held_out = 1.0 + 0.2 * (n_experts == 8) + 0.1 * seed * (model == "s")
                        records.append(
                            {
                                "config_hash": f"{model}{kind}{method}{n_experts}{seed}",
                                "study": "t",
                                "model": model,
                                "parameters": parameters,
                                "base_kind": kind,
                                "method": method,
                                "selection": "validation",
                                "hyperparameters": json.dumps({"scale": 0.5 + seed}),
                                "n_experts": n_experts,
                                "subset_seed": seed,
                                "expert_set": "x",
                                "held_in": held_in,
                                "held_out": held_out,
                                "held_in_multitask": held_in / 0.8,
                                "held_out_multitask": held_out / 1.1,
                            }
                        )
    return pd.DataFrame(records)


def test_seed_views_pair_one_subset_with_the_single_subset_runs():
    views = findings_module.seed_views(synthetic_summary())
    assert len(views) == 2
    for seed, view in enumerate(views):
        assert set(view.loc[view["n_experts"] == 2, "subset_seed"]) == {seed}
        assert len(view[view["n_experts"] == 8]) == 8 and len(view) == 16


def test_findings_follow_the_planted_effects():
    findings = findings_module.findings_table(synthetic_summary()).set_index("statistic")

    def row(prefix: str) -> pd.Series:
        (match,) = [name for name in findings.index if name.startswith(prefix)]
        return findings.loc[match]

    assert row("held-in: IT base - base")["value"] == pytest.approx(0.10)
    assert row("held-in: share of configurations where IT")["value"] == 1.0
    assert row("held-out: IT base - base")["value"] == pytest.approx(0.0)
    # s - xs held-in: +0.05, and method b's gap shrinks by 0.02 -> mean over methods +0.06
    assert row("held-in: s - xs")["value"] == pytest.approx(0.06)
    # held-out change 2 -> 8 experts on s: 0.2 in the seed-0 view, 0.1 in the seed-1 view
    change = row("held-out change 2 -> 8 experts: s")
    assert (change["value"], change["min"], change["max"]) == pytest.approx((0.15, 0.1, 0.2))
    assert row("held-out change 2 -> 8 experts: xs")["value"] == pytest.approx(0.2)
    assert row("held-in change 2 -> 8 experts: xs")["value"] == pytest.approx(0.0)
    assert row("held-in spread across methods (max - min), IT base, 8 experts: xs")["value"] == pytest.approx(
        0.03
    )
    assert row("held-in spread across methods (max - min), IT base, 8 experts: s")["value"] == pytest.approx(
        0.01
    )
    # held-out / base: 2 experts 1.0 (s seed 1: 1.1), 8 experts 1.2 -> every configuration but xs@2 above 1
    assert row("held-out / base zero-shot: share of configurations > 1")["value"] == pytest.approx(
        (0.5 + 0.75) / 2
    )


def test_findings_get_intervals_and_verdicts_from_run_draws():
    """Runs whose draws all equal their observed scores (no example noise): a statistic's interval spans
    only its spread over the resampled seed views, so the planted effects decide the verdicts."""
    summary = synthetic_summary()
    summary.loc[summary["base_kind"] == "it", "held_out"] -= 0.05  # IT below base held-out: paper says above
    draws = {
        row.config_hash: {score: np.full(200, getattr(row, score)) for score in report.SCORES}
        for row in summary.itertuples(index=False)
    }
    findings = findings_module.findings_table(summary, draws, PairedBootstrap(draws=200, seed=0))
    table = findings.set_index("statistic")
    it_gap = table.loc["held-in: IT base - base (mean over size, method, experts)"]
    assert (it_gap["95ci"], it_gap["paper"], it_gap["verdict"]) == ("[0.100, 0.100]", "> 0", "reproduced")
    assert table.loc["held-out: IT base - base", "verdict"] == "contradicted"
    # held-out 2 -> 8 experts on s: 0.2 in the seed-0 view, 0.1 in the seed-1 view: interval [0.1, 0.2]
    change = table.loc["held-out change 2 -> 8 experts: s"]
    assert (change["95ci"], change["verdict"]) == ("[0.100, 0.200]", "reproduced")
    assert table.loc["held-in change 2 -> 8 experts: s", "verdict"] == "not resolved"  # 0; paper: a fall
    # method spread 0.01 on s vs 0.03 on xs: methods more alike at scale, as the paper
    spread = table.loc[
        "held-in spread across methods, IT base, mean over expert counts: s minus xs (methods alike at scale)"
    ]
    assert (spread["value"], spread["verdict"]) == (pytest.approx(-0.02), "reproduced")
    assert table.loc["held-in: share of configurations where IT > base", "verdict"] == "-"
    assert set(findings["verdict"]) <= {"reproduced", "contradicted", "not resolved", "-"}


def test_subset_spread_and_paper_comparison():
    summary = synthetic_summary()
    spread = study.subset_spread(summary)
    at = spread.set_index(["model", "base_kind", "method", "n_experts"])
    assert at.loc[("s", "it", "a", 2), "held_out"] == pytest.approx(1.05)
    assert at.loc[("s", "it", "a", 2), "held_out_sd"] == pytest.approx(0.05)  # population sd of 1.0, 1.1
    assert at.loc[("s", "it", "a", 2), "hyperparameters"] == '{"scale": 0.5} | {"scale": 1.5}'
    baseline = pd.DataFrame(
        [{"model": "s", "parameters": 800, "base_kind": "it", "held_in": 0.9, "held_out": 1.3}]
    )
    comparison = study.paper_comparison(spread.replace({"method": {"a": "task_arithmetic"}}), baseline)
    ours = dict(zip(comparison["comparison"], comparison.iloc[:, 2]))
    assert ours["task arithmetic, largest IT base: held-out"] == "s-it: 1.050 (sd 0.050) -> 1.200"
    assert ours["multitask baseline, largest IT base: held-in"] == "s-it: 0.900"
    assert ours["task arithmetic, smallest base: held-in"] == "xs-base: 0.500 (sd 0.000) -> 0.500"


def test_multitask_baseline_is_normalized_like_the_merged_models():
    tasks = {  # task -> (category, group, value, reference); multitask_reference set below
        "a1": ("a", "held_in", 0.5, 0.8),
        "a2": ("a", "held_in", 0.5, 0.5),
        "b1": ("b", "held_in", 0.5, 0.4),
        "z1": ("z", "held_out", 0.5, 0.5),
    }
    rows = make_rows("h", tasks, base_kind="it")
    rows["multitask_reference"] = rows["task"].map({"a1": 0.4, "a2": 0.5, "b1": 0.4, "z1": 0.6})
    (baseline,) = study.multitask_baseline(rows).to_dict("records")
    assert baseline["held_in"] == pytest.approx(((0.5 + 1.0) / 2 + 1.0) / 2)
    assert baseline["held_out"] == pytest.approx(1.2)


def test_select_subset_seed_shares_one_search_across_subsets(micro_zoo):
    def spec(*extra: str):
        return validate(compose(["model=micro", "experts.n_experts=2", *extra]))

    assert spec("select_subset_seed=0").config_hash == spec().config_hash  # no search: no effect
    searched = [
        spec("select=validation", "select_subset_seed=0", f"experts.subset_seed={seed}") for seed in range(3)
    ]
    assert searched[0].config_hash != spec("select=validation").config_hash
    runs = [runner.selection_run(run) for run in searched]
    assert runs[0] is searched[0]
    assert {run.config_hash for run in runs} == {searched[0].config_hash}
    assert all(run.categories == searched[0].categories for run in runs)
    assert searched[1].categories != searched[0].categories


def test_select_replicate_shares_one_search_across_replicates(micro_zoo):
    def spec(*extra: str):
        return validate(compose(["model=micro", "experts.n_experts=2", "select=validation", *extra]))

    shared = ["select_subset_seed=0", "select_replicate=0"]
    runs = [
        spec(*shared, f"experts.replicate={r}", f"experts.subset_seed={s}") for r in (0, 1) for s in (0, 1)
    ]
    searches = [runner.selection_run(run) for run in runs]
    assert searches[0] is runs[0]
    assert {search.config_hash for search in searches} == {runs[0].config_hash}
    assert all(search.config.experts.replicate == 0 for search in searches)
    assert runs[2].config_hash != runs[0].config_hash  # the replicates' own runs stay distinct
    own = runner.selection_run(spec("select_subset_seed=0", "experts.replicate=1"))
    assert own.config.experts.replicate == 1
    with pytest.raises(ConfigError, match="select_replicate: 3 is not allowed"):
        spec("select_replicate=3")


def test_parallel_runs_sharing_a_search_run_it_once(micro_zoo, tmp_path, monkeypatch):
    searched = []

    def slow_search(search, *_):
        searched.append(search.config_hash)
        time.sleep(0.5)  # long enough that the second worker asks while the first still searches
        return {"scale": 0.5 + len(searched)}

    monkeypatch.setattr(runner, "select_on_validation", slow_search)
    runs = [
        validate(
            compose(
                ["model=micro", "experts.n_experts=2", "select=validation", "select_subset_seed=0"]
                + ["select_replicate=0", f"experts.replicate={replicate}", f"results_dir={tmp_path}"]
            )
        )
        for replicate in (0, 1)
    ]
    with ThreadPoolExecutor(2) as pool:
        chosen = list(pool.map(lambda run: runner.chosen_hyperparameters(run, None, None, "cpu"), runs))
    assert searched == [runs[0].config_hash]
    assert chosen == [{"scale": 1.5}, {"scale": 1.5}]


def scores_by_configuration(rows: pd.DataFrame) -> pd.DataFrame:
    summary = report.summarize_runs(rows)
    keys = ["base_kind", "method", "n_experts", "subset_seed", "expert_set", "hyperparameters"]
    return summary.set_index(keys)[report.SCORES].sort_index()


def test_micro_study_matches_the_committed_golden_numbers(micro_zoo, tmp_path, single_torch_thread):
    require_golden_micro_zoo(micro_zoo)
    committed_path = RESULTS / "merging_at_scale_micro" / "rows.parquet"
    assert committed_path.is_file(), "regenerate with the commands in experiments/merging_at_scale/README.md"
    runner.run_study("merging_at_scale_micro", [f"results_dir={tmp_path}"])
    fresh_rows = results.load("merging_at_scale_micro", tmp_path)
    fresh = scores_by_configuration(fresh_rows)
    committed = scores_by_configuration(results.read_fragment(committed_path))
    assert list(fresh.index) == list(committed.index)
    pd.testing.assert_frame_equal(fresh, committed, check_exact=False, atol=GOLDEN_TOLERANCE, rtol=0)
    # one validation search, on the subset of seed 0, reused by seed 1
    summary = report.summarize_runs(fresh_rows)
    chosen = summary.groupby(["base_kind", "method", "n_experts"])["hyperparameters"].nunique()
    assert (chosen == 1).all() and len(summary) == 2
    selections = sorted((tmp_path / "merging_at_scale_micro" / "selections").glob("*.json"))
    assert len(selections) == 1
    seed0 = summary[summary["subset_seed"] == 0]
    searched = {tuple(json.loads(path.read_text())["experts"]) for path in selections}
    assert searched == {tuple(experts.split(",")) for experts in seed0["expert_set"]}


@pytest.mark.parametrize(
    "name",
    [
        "merging_at_scale",
        "merging_at_scale_micro",
        "merging_at_scale_v2",
        "merging_at_scale_v3",
        "merging_at_scale_v4",
    ],
)
def test_committed_study_regenerates_its_report(name, tmp_path):
    committed = RESULTS / name
    assert (committed / "rows.parquet").is_file(), f"results/{name}/rows.parquet is not committed"
    fragments = tmp_path / name / "fragments"
    fragments.mkdir(parents=True)
    shutil.copy(committed / "rows.parquet", fragments / "committed.parquet")
    assert report.main([f"experiment={name}", f"results_dir={tmp_path}"]) == 0
    out = tmp_path / name
    for figure in FIGURES:
        assert (out / figure).read_bytes()[:4] == b"\x89PNG", figure
    findings = (out / "findings.md").read_text()
    assert all(f"| {finding} |" in findings for finding in range(1, 6))
    for path in (entry for entry in committed.iterdir() if entry.is_file()):  # not the local fragments
        assert (out / path.name).is_file(), f"{path.name} was not regenerated"
        if path.suffix == ".md":
            assert (out / path.name).read_text() == path.read_text(), path.name
