"""Runs on the zoo's second expert replicate (experts.replicate=1): run identity, checks, model paths, and
the bootstrap units of studies that hold several replicates."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mergelab import zoo
from mergelab.experiment import results, runner
from mergelab.experiment.config import ConfigError, validate
from mergelab.experiment.score_intervals import subset_keys
from mergelab.experiment.sweep import compose
from mergelab.studies import merging_at_scale_findings as findings_module
from tests.test_study_merging_at_scale import synthetic_summary

RESULTS = Path(__file__).resolve().parents[1] / "results"
V3_RUN = [
    "experiment=merging_at_scale_v3",
    "model=xs",
    "experts.base_kind=base",
    "+experiment/merging_at_scale_method=average",
    "experts.n_experts=2",
    "experts.subset_seed=2",
]


def test_replicate_0_keeps_the_hashes_of_runs_recorded_before_replicates(micro_zoo):
    spec = validate(compose(V3_RUN))
    committed = results.read_fragment(RESULTS / "merging_at_scale_v3" / "rows.parquet")
    recorded = committed[committed["config_hash"] == spec.config_hash]
    assert set(recorded["replicate"]) == {0} and set(recorded["n_experts"]) == {2}
    assert validate(compose([*V3_RUN, "experts.replicate=0"])).config_hash == spec.config_hash
    assert validate(compose([*V3_RUN, "experts.replicate=1"])).config_hash != spec.config_hash


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["experts.replicate=2"], "experts.replicate: 2 is not allowed; allowed: 0, 1"),
        (["experts.replicate=1", "experts.init=different"], "experts.replicate: replicates are fine-tuned"),
        (
            ["model=qwen2.5-0.5b", "model.path=/base", "experts=paths", "+experts.paths.color=/color"]
            + ["experts.replicate=1"],
            "experts.replicate: replicates are zoo experts",
        ),
    ],
)
def test_bad_replicates_fail_with_one_line_naming_the_key(micro_zoo, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        validate(compose(["model=micro", *overrides]))


def test_a_replicate_run_merges_that_replicates_experts_into_the_shared_base(micro_zoo):
    zoo.build("micro", device="cpu", progress=False, replicate=1)
    spec = validate(compose(["model=micro", "experts.n_experts=3", "experts.replicate=1"]))
    models = runner.locate_models(spec)
    assert models.base == str(zoo.model_path("micro", "base", "base"))
    assert models.experts == {
        category: str(zoo.model_path("micro", "base", "expert", category, replicate=1))
        for category in spec.categories
    }
    assert all("/experts_r1/" in path for path in models.experts.values())


def with_replicates(summary: pd.DataFrame) -> pd.DataFrame:
    """The synthetic study run on two expert replicates (replicate 1 a copy with its own run hashes)."""
    second = summary.assign(replicate=1, config_hash=summary["config_hash"] + "r1")
    return pd.concat([summary.assign(replicate=0), second], ignore_index=True)


def test_views_are_one_per_replicate_and_seed_with_that_replicates_single_subset_runs():
    summary = with_replicates(synthetic_summary())
    assert findings_module.view_seeds(summary) == [0, 1, (1, 0), (1, 1)]
    views = findings_module.seed_views(summary)
    assert len(views) == 4
    for key, view in zip(findings_module.view_seeds(summary), views):
        replicate, seed = key if isinstance(key, tuple) else (0, key)
        assert set(view["replicate"]) == {replicate}
        assert set(view.loc[view["n_experts"] == 2, "subset_seed"]) == {seed}
        assert len(view[view["n_experts"] == 8]) == 8 and len(view) == 16
    # the same effects in both replicates: every finding's mean over the views is unchanged
    one = findings_module.findings_table(synthetic_summary()).set_index("statistic")["value"]
    two = findings_module.findings_table(summary).set_index("statistic")["value"]
    pd.testing.assert_series_equal(one, two)


def test_replicates_of_single_subset_configurations_are_views_of_their_own():
    summary = with_replicates(synthetic_summary())
    eight = summary[summary["n_experts"] == 8]
    assert findings_module.view_seeds(eight) == [None, (1, None)]
    assert [set(view["replicate"]) for view in findings_module.seed_views(eight)] == [{0}, {1}]
    assert findings_module.view_seeds(eight[eight["replicate"] == 0]) == [None]


def test_subset_keys_pair_a_seed_with_its_replicate_beyond_replicate_0():
    runs = pd.DataFrame({"subset_seed": [0, 1, 0, 1], "replicate": [0, 0, 1, 1]})
    assert subset_keys(runs) == [0, 1, (1, 0), (1, 1)]
    assert subset_keys(runs.drop(columns=["replicate"])) == [0, 1, 0, 1]
