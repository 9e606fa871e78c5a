"""Merge-method math on cases computed by hand and against an independent re-implementation."""

from __future__ import annotations

import pytest
import torch

from mergelab.methods import METHODS, MergeConfigError, TensorContext, get_method
from mergelab.methods.dare import keep_mask as dare_keep_mask
from mergelab.methods.dare import mask_seed
from mergelab.methods.trim import MagnitudeSelector, keep_mask, tensor_trim_rule
from tests.reference import paper_ties

CTX = TensorContext(name="layer.weight")


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_average_hand_case_and_weights():
    experts = [t(1, 2), t(3, 6)]
    assert torch.equal(get_method("average").merge(t(0, 0), experts, CTX), t(2, 4))
    weighted = get_method("average", weights=[3, 1]).merge(t(0, 0), experts, CTX)
    assert torch.allclose(weighted, t(1.5, 3))


def test_average_does_not_modify_inputs():
    experts = [t(1, 2), t(3, 6)]
    get_method("average").merge(t(0, 0), experts, CTX)
    assert torch.equal(experts[0], t(1, 2))


def test_task_arithmetic_hand_case():
    base, experts = t(1, 1), [t(2, 0), t(4, 1)]  # task vectors (1, -1) and (3, 0)
    merged = get_method("task_arithmetic", scale=0.5, weights=[1, 2]).merge(base, experts, CTX)
    assert torch.allclose(merged, base + 0.5 * t(1 + 6, -1 + 0))


def test_ties_hand_case_trim_elect_disjoint_mean():
    base = t(0, 0, 0, 0)
    experts = [t(1, -2, 3, 0), t(-1, 1, 4, -5)]
    # trim keeps 2 of 4: (0, -2, 3, 0) and (0, 0, 4, -5); votes (0, -2, 7, -5); majority sign -1;
    # entry 0 has no kept values -> 0; entry 2 mean of 3 and 4.
    merged = get_method("ties", trim_scope="tensor", density=0.5).merge(base, experts, CTX)
    assert torch.equal(merged, t(0, -2, 3.5, -5))


def test_ties_zero_vote_takes_majority_sign():
    base = t(0, 0, 0, 0)
    experts = [t(2, -1, -1, 0), t(-2, -1, -1, 0)]  # entry 0 cancels exactly; majority of signs is -1
    merged = get_method("ties", trim_scope="tensor", density=1.0).merge(base, experts, CTX)
    assert torch.equal(merged, t(-2, -1, -1, 0))
    forced = TensorContext(name="x", majority_sign=1.0)
    assert torch.equal(
        get_method("ties", trim_scope="tensor", density=1.0).merge(base, experts, forced), t(2, -1, -1, 0)
    )


def test_ties_sign_count_differs_from_sum():
    base = t(0)
    experts = [t(5), t(-1), t(-1)]  # sum says +, count says -
    by_sum = get_method("ties", trim_scope="tensor", density=1.0, sign="sum").merge(base, experts, CTX)
    by_count = get_method("ties", trim_scope="tensor", density=1.0, sign="count").merge(base, experts, CTX)
    assert torch.equal(by_sum, t(5))
    assert torch.equal(by_count, t(-1))


def test_ties_agg_sum_versus_mean_and_scale():
    base = t(1, 1)
    experts = [t(3, 0), t(5, -2)]  # task vectors (2, -1), (4, -3)
    mean = get_method("ties", trim_scope="tensor", density=1.0, scale=0.5).merge(base, experts, CTX)
    total = get_method("ties", trim_scope="tensor", density=1.0, agg="sum").merge(base, experts, CTX)
    assert torch.equal(mean, t(1 + 0.5 * 3, 1 + 0.5 * -2))
    assert torch.equal(total, t(1 + 6, 1 - 4))


def test_ties_weights_apply_after_election():
    base = t(0)
    experts = [t(3), t(-2)]  # elected on raw values: + ; a weight of 10 on expert 2 must not flip it
    merged = get_method("ties", trim_scope="tensor", density=1.0, agg="sum", weights=[1, 10]).merge(
        base, experts, CTX
    )
    assert torch.equal(merged, t(3))


def test_trim_keeps_exact_count_with_ties_first_in_order():
    magnitude = t(1, 3, 3, 3, 0)
    rule = tensor_trim_rule(magnitude, density=0.4)  # keep 2 of 5: the first two of three tied 3s
    assert torch.equal(keep_mask(magnitude, rule), torch.tensor([False, True, True, False, False]))
    assert not keep_mask(magnitude, tensor_trim_rule(magnitude, density=0.1)).any()


def test_ties_tensor_scope_matches_paper_formula():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(257, generator=generator)
    experts = [base + torch.randn(257, generator=generator) for _ in range(4)]
    for density in (0.1, 0.2, 0.5, 1.0):
        merged = get_method("ties", trim_scope="tensor", density=density, scale=1.3).merge(base, experts, CTX)
        assert torch.allclose(merged, paper_ties(base, experts, density, 1.3), atol=1e-6)


def test_global_trim_differs_from_tensor_trim_and_matches_paper():
    # Tensor "a" holds large task-vector entries, "b" small ones: global trimming spends the budget on "a".
    base = {"a": torch.zeros(4), "b": torch.zeros(4)}
    experts = [{"a": t(10, 9, 8, 7), "b": t(1, 2, 3, 4)}, {"a": t(-6, 5, 9, 1), "b": t(-1, 1, 2, -3)}]
    method = get_method("ties", density=0.5)  # trim_scope global by default
    selectors = [MagnitudeSelector(keep=4) for _ in experts]
    for _ in range(2):
        for selector, expert in zip(selectors, experts):
            for name in ("a", "b"):
                selector.observe((expert[name] - base[name]).abs())
            selector.next_pass()
    global_merge = {}
    for name in ("a", "b"):
        rules = tuple(
            selector.rule_for((expert[name] - base[name]).abs())
            for selector, expert in zip(selectors, experts)
        )
        global_merge[name] = method.merge(
            base[name], [e[name] for e in experts], TensorContext(name, rules, 1.0)
        )
    flat_reference = paper_ties(
        torch.cat([base["a"], base["b"]]),
        [torch.cat([e["a"], e["b"]]) for e in experts],
        density=0.5,
        majority_sign=1.0,
    )
    assert torch.equal(torch.cat([global_merge["a"], global_merge["b"]]), flat_reference)
    tensor_merge = get_method("ties", density=0.5, trim_scope="tensor").merge(
        base["b"], [e["b"] for e in experts], CTX
    )
    assert torch.equal(global_merge["b"], t(0, 0, 0, -3))  # only expert 2 keeps an entry of "b"
    assert torch.equal(tensor_merge, t(0, 0, 2.5, 4))
    assert not torch.equal(tensor_merge, global_merge["b"])


def test_magnitude_selector_is_exact_over_streamed_tensors():
    generator = torch.Generator().manual_seed(1)
    tensors = [torch.randn(n, generator=generator).abs() for n in (1000, 37, 4096)]
    tensors.append(torch.full((50,), float(tensors[0][0])))  # many exact ties
    values = torch.cat(tensors).sort(descending=True).values
    for keep in (0, 1, 2, 55, 1000, len(values)):
        selector = MagnitudeSelector(keep)
        for _ in range(2):
            for tensor in reversed(tensors):
                selector.observe(tensor)
            selector.next_pass()
        threshold, above = selector.result()
        if keep == 0:
            assert threshold == float("inf") and above == 0
            continue
        assert threshold == float(values[keep - 1])
        assert above == int((values > values[keep - 1]).sum())


def test_dare_density_one_equals_task_arithmetic():
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(3, 5, generator=generator)
    experts = [base + torch.randn(3, 5, generator=generator) for _ in range(3)]
    dare = get_method("dare", density=1.0, scale=0.7).merge(base, experts, CTX)
    arithmetic = get_method("task_arithmetic", scale=0.7).merge(base, experts, CTX)
    assert torch.allclose(dare, arithmetic, atol=1e-6)


def test_dare_survivors_rescaled_by_inverse_density():
    base = torch.zeros(10_000)
    expert = torch.full((10_000,), 2.0)
    sparse = get_method("dare", density=0.25, seed=3).sparse_task_vectors(base, [expert], "w")[0]
    survivors = sparse[sparse != 0]
    assert torch.equal(survivors, torch.full_like(survivors, 8.0))
    assert abs(len(survivors) / 10_000 - 0.25) < 0.02
    expected_mask = dare_keep_mask(base.shape, 0.25, mask_seed(3, 0, "w"))
    assert torch.equal(sparse != 0, expected_mask)


def test_dare_masks_depend_on_seed_expert_and_name_only():
    method = get_method("dare", density=0.5, seed=7)
    base, expert = torch.zeros(64), torch.ones(64)
    first = method.sparse_task_vectors(base, [expert, expert], "x")
    again = method.sparse_task_vectors(base, [expert, expert], "x")
    other_name = method.sparse_task_vectors(base, [expert, expert], "y")
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first, other_name)


def test_dare_ties_combine_elects_sign_on_sparse_vectors():
    base = t(0, 0)
    experts = [t(4, -1), t(-1, -3)]
    merged = get_method("dare", density=1.0, combine="ties").merge(base, experts, CTX)
    assert torch.equal(merged, t(4, -2))


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("tie", {}, f"unknown merge method 'tie'; valid: {sorted(METHODS)}"),
        ("ties", {"densty": 0.2}, "unknown hyperparameter(s) ['densty'] for method 'ties'; valid:"),
        ("ties", {"density": 0.0}, "density=0.0 must be in (0, 1]"),
        ("dare", {"density": 1.5}, "density=1.5 must be in (0, 1]"),
        ("ties", {"sign": "vote"}, "sign='vote' is not one of ['sum', 'count']"),
        ("dare", {"combine": "avg"}, "combine='avg' is not one of ['linear', 'ties']"),
    ],
)
def test_bad_method_configuration_is_named(name, hparams, message):
    with pytest.raises(MergeConfigError) as error:
        get_method(name, **hparams)
    assert message in str(error.value)


def test_weights_length_must_match_experts():
    with pytest.raises(MergeConfigError, match="weights has 1 entries for 2 experts"):
        get_method("task_arithmetic", weights=[1]).merge(t(0), [t(1), t(2)], CTX)


def test_every_method_has_a_config_with_its_defaults():
    import dataclasses
    from pathlib import Path

    import yaml

    conf_dir = Path(__file__).resolve().parents[1] / "conf" / "merge"
    for name, method in METHODS.items():
        config = yaml.safe_load((conf_dir / f"{name}.yaml").read_text())
        assert config.pop("method") == name
        defaults = {field.name: field.default for field in dataclasses.fields(method.Params)}
        assert config == defaults


def test_selector_hands_tied_entries_to_the_earliest_tensors():
    tensors = [t(2, 1), t(1, 1), t(1, 0)]  # keep 3: the 2 and the first two 1s in canonical order
    selector = MagnitudeSelector(keep=3)
    for _ in range(2):
        for tensor in tensors:
            selector.observe(tensor)
        selector.next_pass()
    masks = [keep_mask(tensor, selector.rule_for(tensor)) for tensor in tensors]
    assert [mask.tolist() for mask in masks] == [[True, True], [True, False], [False, False]]


def test_ties_weighted_disjoint_mean_divides_by_agreeing_weights():
    base = t(0, 0)
    experts = [t(2, 1), t(6, -1), t(4, 5)]  # entry 1: votes +5 elect +, expert 2 disagrees
    merged = get_method("ties", trim_scope="tensor", density=1.0, weights=[1, 3, 2]).merge(base, experts, CTX)
    assert torch.allclose(merged, t((2 + 18 + 8) / 6, (1 + 10) / 3))
