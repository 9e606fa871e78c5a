"""Sign-conflict fractions on hand-built task vectors, checked against counts done by hand."""

from __future__ import annotations

import pytest
import torch

from mergelab.studies.sign_conflicts import (
    conflict_fraction,
    draw_sign_conflicts,
    overlap_fraction,
    random_sign_baseline,
    random_sign_conflict,
    sign_conflicts,
    sign_pattern_histogram,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# Base zero; two tensors, 6 parameters in all. Task vectors (tensor "a" then "b"):
#   expert 0: ( 1,  2, -3,  0 | 0.1,  5)
#   expert 1: (-1,  2,  3,  4 | 0.2, -6)
#   expert 2: ( 1, -2,  0, -4 | 0.3,  7)
BASE = {"a": t(0, 0, 0, 0), "b": t(0, 0), "steps": torch.tensor([3])}  # an int buffer is ignored
EXPERTS = [
    {"a": t(1, 2, -3, 0), "b": t(0.1, 5), "steps": torch.tensor([9])},
    {"a": t(-1, 2, 3, 4), "b": t(0.2, -6), "steps": torch.tensor([9])},
    {"a": t(1, -2, 0, -4), "b": t(0.3, 7), "steps": torch.tensor([9])},
]


def test_untrimmed_conflicts_by_hand():
    histogram = sign_pattern_histogram(BASE, EXPERTS, density=None)
    assert int(histogram.sum()) == 6
    # experts 0,1 disagree at a0, a2, b1 -> 3/6; experts 0,2 only at a1 (a2, a3: a 0 takes no side) -> 1/6;
    # experts 1,2 at a0, a1, a3, b1 -> 4/6; all three: a0, a1, a2, a3, b1 -> 5/6
    assert conflict_fraction(histogram, [0, 1]) == pytest.approx(3 / 6)
    assert conflict_fraction(histogram, [0, 2]) == pytest.approx(1 / 6)
    assert conflict_fraction(histogram, [1, 2]) == pytest.approx(4 / 6)
    assert conflict_fraction(histogram, [0, 1, 2]) == pytest.approx(5 / 6)


def test_random_sign_baselines_by_hand():
    assert [random_sign_conflict(n) for n in (2, 4, 8)] == [0.5, 0.875, 1 - 2**-7]
    # untrimmed, all three: a0, a1, b0, b1 have 3 nonzero experts (chance 3/4), a2, a3 two (chance 1/2)
    untrimmed = sign_pattern_histogram(BASE, EXPERTS, density=None)
    assert random_sign_baseline(untrimmed, [0, 1, 2]) == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # experts 0, 2 untrimmed are both nonzero at a0, a1, b0, b1
    assert random_sign_baseline(untrimmed, [0, 2]) == pytest.approx(4 * 0.5 / 6)
    # trimmed to 3 entries each (see below): a1, a2, a3 have two nonzero experts, b1 three, a0 and b0 none
    trimmed = sign_pattern_histogram(BASE, EXPERTS, density=0.5)
    assert random_sign_baseline(trimmed, [0, 1, 2]) == pytest.approx((3 * 0.5 + 0.75) / 6)
    assert random_sign_baseline(trimmed, [0, 2]) == pytest.approx(2 * 0.5 / 6)
    table = sign_conflicts(BASE, EXPERTS, densities=(0.5,)).set_index("n_experts")
    assert table.loc[3, "random_signs"] == 0.75
    assert table.loc[2, "random_signs_masks"] == pytest.approx((2 * 0.5 + 2 * 0.5 + 2 * 0.5) / 6 / 3)


def test_trimmed_conflicts_by_hand():
    # density 0.5 keeps int(0.5 * 6) = 3 entries per expert over both tensors:
    #   expert 0 keeps 5, -3, 2 -> (0, 2, -3, 0 | 0, 5)
    #   expert 1 keeps -6, 4, 3 -> (0, 0, 3, 4 | 0, -6)
    #   expert 2 keeps 7, -4, -2 -> (0, -2, 0, -4 | 0, 7)
    histogram = sign_pattern_histogram(BASE, EXPERTS, density=0.5)
    # 0,1: a2, b1 -> 2/6; 0,2: a1 -> 1/6 (trimming removed a0's conflict); 1,2: a3, b1 -> 2/6;
    # all three: a1, a2, a3, b1 -> 4/6
    assert conflict_fraction(histogram, [0, 1]) == pytest.approx(2 / 6)
    assert conflict_fraction(histogram, [0, 2]) == pytest.approx(1 / 6)
    assert conflict_fraction(histogram, [1, 2]) == pytest.approx(2 / 6)
    assert conflict_fraction(histogram, [0, 1, 2]) == pytest.approx(4 / 6)
    # both of experts 0 and 2 are nonzero only at a1 and b1 after trimming (a0, a1, b0, b1 before)
    assert overlap_fraction(histogram, [0, 2]) == pytest.approx(2 / 6)
    assert overlap_fraction(sign_pattern_histogram(BASE, EXPERTS, density=None), [0, 2]) == pytest.approx(
        4 / 6
    )


def test_table_averages_every_subset_and_draws(tmp_path):
    table = sign_conflicts(BASE, EXPERTS, densities=(None, 0.5))
    untrimmed = table[table["trimming"] == "none"].set_index("n_experts")
    assert untrimmed.loc[2, "subsets"] == 3
    assert untrimmed.loc[2, "conflict_fraction"] == pytest.approx((3 + 1 + 4) / 18)
    assert (untrimmed.loc[2, "min"], untrimmed.loc[2, "max"]) == pytest.approx((1 / 6, 4 / 6))
    assert untrimmed.loc[3, "conflict_fraction"] == pytest.approx(5 / 6)
    assert set(table["trimming"]) == {"none", "top 0.5"}
    trimmed = table[table["trimming"] == "top 0.5"].set_index("n_experts")
    # trimmed, each pair has two entries where both are nonzero (0,1: a2, b1; 0,2: a1, b1; 1,2: a3, b1),
    # conflicting at 2, 1 and 2 of them; the three experts overlap and conflict at a1, a2, a3, b1
    assert trimmed.loc[2, "conflict_given_overlap"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert trimmed.loc[3, "conflict_given_overlap"] == pytest.approx(1.0)
    table.insert(0, "model", "hand")
    table.insert(1, "base_kind", "base")
    path = draw_sign_conflicts(table, tmp_path / "conflicts.png")
    assert path.stat().st_size > 1000


def test_bad_expert_counts_and_subsets_are_named():
    with pytest.raises(ValueError, match="experts: 1 given"):
        sign_pattern_histogram(BASE, EXPERTS[:1], density=None)
    histogram = sign_pattern_histogram(BASE, EXPERTS, density=None)
    with pytest.raises(ValueError, match="names an expert outside 0..2"):
        conflict_fraction(histogram, [0, 3])


def test_a_conflict_table_is_recomputed_once_its_experts_are_rebuilt(micro_zoo, tmp_path):
    """The table records the digest of the experts it came from; a table of other experts (a rebuilt zoo)
    is computed again, one that predates the digest is kept as it is."""
    import pandas as pd

    from mergelab.studies.ties import write_conflicts

    rows = pd.DataFrame({"model": ["micro"], "base_kind": ["base"]})
    write_conflicts(rows, tmp_path)
    table_path = tmp_path / "sign_conflicts.csv"
    fresh = pd.read_csv(table_path, dtype={"zoo_digest": str})
    assert fresh["zoo_digest"].nunique() == 1 and len(fresh["zoo_digest"][0]) == 16
    stale = fresh.assign(zoo_digest="0" * 16, conflict_fraction=-1.0)
    stale.to_csv(table_path, index=False)
    write_conflicts(rows, tmp_path)
    assert pd.read_csv(table_path, dtype={"zoo_digest": str}).equals(fresh)
    legacy = fresh.drop(columns="zoo_digest").assign(conflict_fraction=-1.0)
    legacy.to_csv(table_path, index=False)
    write_conflicts(rows, tmp_path)
    assert (pd.read_csv(table_path)["conflict_fraction"] == -1.0).all()
