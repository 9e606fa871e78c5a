"""mergelab.experiment.score_intervals: bootstrap draws of run and configuration scores from per-example
correctness, checked against a direct re-computation with the same resampling weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mergelab.experiment import score_intervals
from mergelab.experiment.intervals import PairedBootstrap


def example_rows(config_hash: str, subset_seed: int, tasks: dict) -> pd.DataFrame:
    """Rows of one run: task -> (category, group, chance, merged correctness, reference correctness)."""
    records = []
    for task, (category, group, chance, correct, reference) in tasks.items():
        records.append(
            {
                "config_hash": config_hash,
                "subset_seed": subset_seed,
                "model": "m",
                "base_kind": "base",
                "task": task,
                "category": category,
                "group": group,
                "chance": chance,
                "value": float(np.mean(correct)),
                "reference": float(np.mean(reference)),
                "examples": list(range(len(correct))),
                "correct": list(correct),
                "reference_correct": list(reference),
                "multitask_correct": None,
                "clusters": None,
            }
        )
    return pd.DataFrame(records)


RNG = np.random.default_rng(0)
A1, A2, B1, Z1 = (RNG.integers(0, 2, 40) for _ in range(4))
REF_A1, REF_A2, REF_B1, REF_Z1 = (
    np.maximum(RNG.integers(0, 2, 40), RNG.integers(0, 2, 40)) for _ in range(4)
)
TASKS = {
    "a1": ("a", "held_in", 0.5, A1, REF_A1),
    "a2": ("a", "held_in", 0.5, A2, REF_A2),
    "b1": ("b", "held_in", 0.5, B1, REF_B1),
    "z1": ("z", "held_out", 1 / 3, Z1, REF_Z1),
}


def test_run_draws_equal_a_direct_computation_with_the_same_weights():
    bootstrap = PairedBootstrap(draws=300, seed=2)
    rows = example_rows("r", 0, TASKS)
    draws = score_intervals.run_draws(rows, bootstrap)
    weights = {task: bootstrap.example_weights(task, range(40)) for task in TASKS}

    def accuracy(task, values, draw):
        return float(weights[task][draw] @ values / weights[task][draw].sum())

    for draw in (0, 1, 299):
        ratio = {t: accuracy(t, TASKS[t][3], draw) / accuracy(t, TASKS[t][4], draw) for t in TASKS}
        held_in = ((ratio["a1"] + ratio["a2"]) / 2 + ratio["b1"]) / 2
        assert draws["held_in"][draw] == pytest.approx(held_in)
        assert draws["held_out"][draw] == pytest.approx(ratio["z1"])
        merged, reference = accuracy("z1", Z1, draw), accuracy("z1", REF_Z1, draw)
        assert draws["held_out_chance"][draw] == pytest.approx((merged - 1 / 3) / (reference - 1 / 3))
    assert np.isnan(draws["held_in_multitask"]).all()  # no multitask baseline in these rows


def test_a_merged_model_equal_to_its_reference_scores_one_in_every_draw():
    same = {task: (c, g, ch, ref, ref) for task, (c, g, ch, _, ref) in TASKS.items()}
    draws = score_intervals.run_draws(example_rows("r", 0, same), PairedBootstrap(draws=200, seed=0))
    assert draws["held_in"] == pytest.approx(np.ones(200))
    assert draws["held_out_chance"] == pytest.approx(np.ones(200))


def test_configuration_draws_weight_runs_by_the_resampled_subsets():
    bootstrap = PairedBootstrap(draws=200, seed=1)
    rows = pd.concat([example_rows("r0", 0, TASKS), example_rows("r1", 1, TASKS)], ignore_index=True)
    rows.loc[rows["config_hash"] == "r1", "correct"] = rows.loc[
        rows["config_hash"] == "r1", "reference_correct"
    ]
    draws = score_intervals.study_run_draws(rows, bootstrap)
    summary = rows.drop_duplicates("config_hash")[["config_hash", "subset_seed"]]
    mean = score_intervals.runs_mean_draws(summary, draws, "held_in", bootstrap)
    weights = bootstrap.subset_weights([0, 1])
    expected = (weights[:, 0] * draws["r0"]["held_in"] + weights[:, 1] * 1.0) / weights.sum(axis=1)
    assert mean == pytest.approx(expected)
    # two runs of one seed (variants pooled in one table row) share that seed's weight
    pooled = pd.DataFrame({"config_hash": ["r0", "r1", "r0"], "subset_seed": [0, 1, 1]})
    expected = (weights[:, 0] * draws["r0"]["held_in"] + weights[:, 1] * (1.0 + draws["r0"]["held_in"])) / (
        weights[:, 0] + 2 * weights[:, 1]
    )
    assert score_intervals.runs_mean_draws(pooled, draws, "held_in", bootstrap) == pytest.approx(expected)


def test_interval_columns_sit_beside_their_scores():
    bootstrap = PairedBootstrap(draws=200, seed=0)
    rows = pd.concat([example_rows("r0", 0, TASKS), example_rows("r1", 1, TASKS)], ignore_index=True)
    rows["method"] = "ties"
    draws = score_intervals.study_run_draws(rows, bootstrap)
    summary = rows.drop_duplicates("config_hash")[["config_hash", "subset_seed", "method"]]
    table = pd.DataFrame({"method": ["ties"], "held_in": [0.9], "held_out": [1.1]})
    shown = score_intervals.interval_columns(
        table, summary, draws, ["method"], ["held_in", "held_out"], bootstrap
    )
    assert list(shown.columns) == ["method", "held_in", "held_in_95ci", "held_out", "held_out_95ci"]
    low, high = (float(value) for value in shown.loc[0, "held_out_95ci"].strip("[]").split(", "))
    assert low <= high


def test_reference_table_flags_references_near_chance():
    at_chance = np.array([1, 0, 0] * 20)  # 1/3 on a three-way task
    clear = np.array([1] * 55 + [0] * 5)
    tasks = {
        "x": ("a", "held_in", 1 / 3, at_chance, at_chance),
        "y": ("z", "held_out", 1 / 3, clear, clear),
    }
    table = score_intervals.reference_table(example_rows("r", 0, tasks), PairedBootstrap(draws=500, seed=0))
    flags = dict(zip(table["task"], table["near_chance"]))
    assert flags == {"x": "yes", "y": "no"}
    error = table.set_index("task").loc["x", "standard_error"]
    assert error == pytest.approx(math.sqrt(1 / 3 * 2 / 3 / 60), rel=0.15)  # the binomial standard error


def test_has_examples_needs_every_row_to_carry_them():
    rows = example_rows("r", 0, TASKS)
    assert score_intervals.has_examples(rows)
    rows.loc[0, "correct"] = None
    assert not score_intervals.has_examples(rows)
    assert not score_intervals.has_examples(rows.drop(columns=["clusters"]))


def test_chance_corrected_draws_leave_out_a_reference_at_chance():
    """A second held-out task whose reference sits at chance changes the ratio view's draws but not the
    chance-corrected ones, which are z1's alone."""
    at_chance = np.array([1, 0, 0] * 20)[:40]
    tasks = {**TASKS, "y1": ("y", "held_out", 1 / 3, at_chance, at_chance)}
    bootstrap = PairedBootstrap(draws=100, seed=1)
    alone = score_intervals.run_draws(example_rows("r", 0, TASKS), bootstrap)
    both = score_intervals.run_draws(example_rows("r", 0, tasks), bootstrap)
    assert both["held_out_chance"] == pytest.approx(alone["held_out_chance"])
    assert not np.allclose(both["held_out"], alone["held_out"])
