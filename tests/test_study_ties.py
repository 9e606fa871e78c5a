"""experiments/ties: the micro-zoo study reproduces its committed golden numbers, and every committed
`results/ties_*` table regenerates its report (tables and figures) with `mergelab report`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mergelab.experiment import report, results, runner
from mergelab.studies import ties
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
    "ties_v2": "ties_v2",
    "ties_v3": "ties_v3",
    "ties_v4": "ties_v4",
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


def ablation_run(config_hash: str, model: str, changes: dict, selection: str, held_in: float) -> dict:
    from mergelab.studies.ties import TIES_DEFAULTS

    return {
        "config_hash": config_hash,
        "model": model,
        "base_kind": "base",
        "method": "ties",
        "selection": selection,
        **TIES_DEFAULTS,
        **changes,
        "held_in": held_in,
        "held_out": 1.0,
    }


def test_ablation_changes_get_paired_intervals_and_verdicts():
    """Two conditions; w/o elect is 10-20 points below full TIES in every draw (reproduced), w/o trim
    straddles zero (not resolved), w/o disjoint mean lies above (contradicted)."""
    from mergelab.studies.ties import ABLATION, ablation_tables

    variants = {
        name: ABLATION[name] for name in ("TIES (scale searched)", "w/o elect", "w/o trim (density 1)")
    }
    variants["w/o disjoint mean (agg mean_all)"] = ABLATION["w/o disjoint mean (agg mean_all)"]
    runs, draws = [], {}
    for model in ("xs", "s"):
        spread = np.linspace(0.0, 1.0, 100)
        for name, (changes, selection), observed, draw in [
            ("full", variants["TIES (scale searched)"], 0.5, np.full(100, 0.5)),
            ("elect", variants["w/o elect"], 0.35, 0.3 + 0.1 * spread),
            ("trim", variants["w/o trim (density 1)"], 0.5, 0.45 + 0.1 * spread),
            ("agg", variants["w/o disjoint mean (agg mean_all)"], 0.6, 0.55 + 0.1 * spread),
        ]:
            runs.append(ablation_run(f"{model}{name}", model, changes, selection, observed))
            draws[f"{model}{name}"] = {"held_in": draw, "held_out": np.ones(100)}
    per_condition, overall = ablation_tables(pd.DataFrame(runs).assign(scale=1.0), variants, draws)
    at = overall.set_index("variant")
    assert at.loc["w/o elect", "d_held_in"] == "-15.0 [-15.0, -15.0]"
    assert at.loc["w/o elect", "d_held_in_95ci"] == "-15.00 [-19.75, -10.25]"  # 2.5% / 97.5% of -20..-10
    assert at.loc["w/o elect", "verdict_held_in"] == "reproduced"
    assert at.loc["w/o trim (density 1)", "verdict_held_in"] == "not resolved"
    assert at.loc["w/o disjoint mean (agg mean_all)", "verdict_held_in"] == "contradicted"
    assert at.loc["TIES (scale searched)", "verdict_held_in"] == "-"
    assert at.loc["w/o elect", "verdict_held_out"] == "not resolved"  # no change at all
    row = per_condition.set_index(["model", "variant"]).loc[("s", "w/o elect")]
    assert row["d_held_in_95ci"] == "-15.00 [-19.75, -10.25]"


def test_method_comparison_is_against_ties_at_its_defaults(tmp_path):
    """Each method minus TIES at the paper's defaults, never an ablation variant of TIES: average is 10
    points below TIES in every draw (reproduced), task arithmetic 5-15 above (contradicted)."""
    from mergelab.studies.ties import write_method_comparison

    spread = np.linspace(0.0, 1.0, 100)
    runs = [
        ablation_run(
            "no_elect", "xs", {"elect": False}, "none", 0.9
        ),  # listed first: must not be the reference
        ablation_run("ties", "xs", {}, "none", 0.5),
        {
            "config_hash": "average",
            "model": "xs",
            "base_kind": "base",
            "method": "average",
            "selection": "none",
        },
        {
            "config_hash": "ta",
            "model": "xs",
            "base_kind": "base",
            "method": "task_arithmetic",
            "selection": "none",
        },
    ]
    runs[2].update(held_in=0.4, held_out=1.0)
    runs[3].update(held_in=0.6, held_out=1.0)
    draws = {
        "no_elect": np.full(100, 0.9),
        "ties": np.full(100, 0.5),
        "average": np.full(100, 0.4),
        "ta": 0.55 + 0.1 * spread,
    }
    draws = {name: {"held_in": draw, "held_out": np.ones(100)} for name, draw in draws.items()}
    [path] = write_method_comparison(pd.DataFrame(runs), draws, tmp_path)
    lines = {line.split(" | ")[0].strip("| "): line for line in path.read_text().splitlines()}
    assert "| -10.0 [-10.0, -10.0] |" in lines["average"] and "| reproduced |" in lines["average"]
    assert "| +10.0 [+10.0, +10.0] |" in lines["task_arithmetic"]
    assert "| contradicted |" in lines["task_arithmetic"]
    assert "| +0.0 [+0.0, +0.0] |" in lines["TIES (scale 1)"]


def test_each_expert_replicate_is_a_condition_of_its_own():
    """w/o elect is 10 points below full TIES on replicate 0 and 30 below on replicate 1: the overall
    change is their mean over the (model, base kind, replicate) conditions."""
    from mergelab.studies.ties import ABLATION, ablation_tables

    variants = {name: ABLATION[name] for name in ("TIES (scale searched)", "w/o elect")}
    runs = []
    for replicate, drop in ((0, 0.1), (1, 0.3)):
        for name, observed in (("TIES (scale searched)", 0.5), ("w/o elect", 0.5 - drop)):
            changes, selection = variants[name]
            run = ablation_run(f"{name}{replicate}", "xs", changes, selection, observed)
            runs.append(run | {"replicate": replicate})
    per_condition, overall = ablation_tables(pd.DataFrame(runs).assign(scale=1.0), variants)
    assert list(per_condition["replicate"]) == [0, 0, 1, 1]
    at = overall.set_index("variant")
    assert at.loc["w/o elect", "conditions"] == 2
    assert at.loc["w/o elect", "d_held_in"] == "-20.0 [-30.0, -10.0]"


def test_the_study_figures_are_the_same_on_every_run(tmp_path):
    """Bars with several runs each carry bootstrapped error bars: seeded, drawing twice gives the same bytes."""
    noise = np.random.default_rng(0)
    data = pd.DataFrame(
        {
            "model": ["xs"] * 24,
            "method": ["ties", "average"] * 12,
            "setting": ["base"] * 12 + ["it"] * 12,
            "held_in": noise.uniform(0.3, 0.9, 24),
            "held_out": noise.uniform(0.8, 1.1, 24),
        }
    )
    style = {"x": "method", "hue": "setting", "col": "tasks", "row": "model"}
    first = ties._draw("bar", data, tmp_path / "first.png", **style)
    second = ties._draw("bar", data, tmp_path / "second.png", **style)
    assert first.read_bytes() == second.read_bytes()
