"""The TIES ablation options (`elect: false`, `agg: mean_all`) on cases computed by hand.

The paper's Table 6 removes one step at a time: "w/o elect" averages the kept entries of both signs
(zeros excluded), "w/o disjoint mean" averages the entries agreeing with the elected sign over all experts
(zeros included). Each case below is chosen so that the ablated result differs from full TIES.
"""

from __future__ import annotations

import pytest
import torch

from mergelab.methods import MergeConfigError, TensorContext, get_method

CTX = TensorContext(name="layer.weight")


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def ties(**hparams):
    return get_method("ties", trim_scope="tensor", **hparams)


# Three experts, four entries (base 0):
#   entry 0: 3, -1, 2  -> sum +4 elects +; agreeing 3, 2
#   entry 1: -4, 0, 2  -> sum -2 elects -; agreeing -4
#   entry 2: 0, 0, 0   -> nothing kept
#   entry 3: 1, 1, 1   -> elects +; all agree
BASE = t(0, 0, 0, 0)
EXPERTS = [t(3, -4, 0, 1), t(-1, 0, 0, 1), t(2, 2, 0, 1)]


def test_defaults_keep_sign_election_and_the_disjoint_mean():
    merged = ties(density=1.0).merge(BASE, EXPERTS, CTX)
    assert torch.equal(merged, t((3 + 2) / 2, -4, 0, 1))
    assert get_method("ties").params.elect is True
    assert get_method("ties").params.agg == "mean"


def test_without_elect_averages_every_kept_entry_of_either_sign():
    merged = ties(density=1.0, elect=False).merge(BASE, EXPERTS, CTX)
    # entry 0: (3 - 1 + 2) / 3; entry 1: (-4 + 2) / 2 (the zero is not counted); entry 3: 1
    assert torch.allclose(merged, t(4 / 3, -1, 0, 1))


def test_without_elect_counts_only_entries_that_survive_trimming():
    base = t(0, 0, 0, 0)
    experts = [t(5, -1, 0.5, 0), t(-3, 4, 0, 0.1)]  # density 0.5 keeps (5, -1) and (-3, 4)
    merged = ties(density=0.5, elect=False).merge(base, experts, CTX)
    assert torch.allclose(merged, t((5 - 3) / 2, (-1 + 4) / 2, 0, 0))


def test_without_elect_and_sum_is_task_arithmetic_on_trimmed_vectors():
    merged = ties(density=1.0, elect=False, agg="sum", scale=0.5).merge(BASE, EXPERTS, CTX)
    assert torch.allclose(merged, 0.5 * (EXPERTS[0] + EXPERTS[1] + EXPERTS[2]))


def test_without_disjoint_mean_divides_agreeing_entries_by_all_experts():
    merged = ties(density=1.0, agg="mean_all").merge(BASE, EXPERTS, CTX)
    # entry 0: (3 + 2) / 3 (the disagreeing -1 counts as 0); entry 1: -4 / 3; entry 3: 3 / 3
    assert torch.allclose(merged, t(5 / 3, -4 / 3, 0, 1))


def test_mean_all_with_weights_divides_by_the_total_weight():
    merged = ties(density=1.0, agg="mean_all", weights=[1, 2, 3]).merge(BASE, EXPERTS, CTX)
    # entry 0: (1*3 + 3*2) / 6; entry 1: 1*(-4) / 6; entry 3: (1 + 2 + 3) / 6
    assert torch.allclose(merged, t(9 / 6, -4 / 6, 0, 1))


def test_without_elect_and_mean_all_is_the_plain_mean_of_trimmed_vectors():
    """The authors' code path for a non-disjoint `mean` with elected signs: |mean| * sign(sum) = mean."""
    base = t(1, 1, 1, 1)
    experts = [expert + base for expert in EXPERTS]
    merged = ties(density=1.0, elect=False, agg="mean_all", scale=2.0).merge(base, experts, CTX)
    assert torch.allclose(merged, base + 2.0 * t(4 / 3, -2 / 3, 0, 1))


def test_ablation_options_work_with_global_trimming_through_the_engine():
    from mergelab.api.merging import merge

    base = {"a": t(0, 0, 0), "b": t(0, 0)}
    experts = [{"a": t(3, -4, 0.1), "b": t(1, 0.2)}, {"a": t(-1, 0.3, 0.2), "b": t(5, 2)}]
    # global density 0.6 keeps int(0.6 * 5) = 3 entries per expert:
    # expert 0 keeps 3, -4, 1; expert 1 keeps -1, 5, 2
    merged = merge(base, experts, "ties", density=0.6, elect=False, progress=False)
    assert torch.allclose(merged["a"], t((3 - 1) / 2, -4, 0))
    assert torch.allclose(merged["b"], t((1 + 5) / 2, 2))
    merged = merge(base, experts, "ties", density=0.6, agg="mean_all", progress=False)
    assert torch.allclose(merged["a"], t(3 / 2, -4 / 2, 0))
    assert torch.allclose(merged["b"], t((1 + 5) / 2, 2 / 2))


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"agg": "median"}, "agg='median' is not one of ['mean', 'sum', 'mean_all']"),
        ({"elect": "no"}, "elect='no' must be true or false"),
        ({"agg": "mean_all", "weights": [1, -1]}, "agg='mean_all' needs weights with a nonzero sum"),
    ],
)
def test_bad_ablation_options_are_named(hparams, message):
    with pytest.raises(MergeConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        get_method("ties", **hparams)
