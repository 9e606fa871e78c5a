"""mergekit's method names (`linear`, `dare_linear`, `dare_ties`) resolve to mergelab methods."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mergelab.api.cli import compose_job
from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.methods import ALIASES, METHODS, MergeConfigError, TensorContext, get_method
from tests.conftest import state_dicts

CTX = TensorContext(name="w")


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_linear_is_the_normalized_weighted_average():
    merged = get_method("linear", weights=[1, 3]).merge(t(100, 100), [t(2, 4), t(6, 0)], CTX)
    assert torch.allclose(merged, t((2 + 18) / 4, 4 / 4))  # the base plays no part


def test_dare_aliases_fix_the_combine_step():
    # density 1 drops nothing, so the two combines are task arithmetic and TIES without trimming
    base, experts = t(0, 0), [t(2, 1), t(6, -1), t(4, 5)]
    linear = get_method("dare_linear", density=1.0).merge(base, [e.clone() for e in experts], CTX)
    ties = get_method("dare_ties", density=1.0).merge(base, [e.clone() for e in experts], CTX)
    assert torch.allclose(linear, t(12, 5))
    # entry 1: votes 1 - 1 + 5 > 0 elect +; the mean of the agreeing 1 and 5
    assert torch.allclose(ties, t(4, 3))


def test_alias_builds_the_method_it_names():
    method = get_method("dare_ties", density=0.3, seed=2)
    assert method.name == "dare"
    assert method.describe() == {
        **get_method("dare").describe(),
        "combine": "ties",
        "density": 0.3,
        "seed": 2,
    }


def test_alias_refuses_a_value_it_fixes_and_unknown_names_list_aliases():
    assert get_method("dare_ties", combine="ties").params.combine == "ties"
    with pytest.raises(
        MergeConfigError, match="'dare_ties' is dare combine=ties; it cannot take combine='linear'"
    ):
        get_method("dare_ties", combine="linear")
    with pytest.raises(MergeConfigError, match="mergekit's names .*'dare_ties'"):
        get_method("dare-ties")


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_group_files_compose_to_the_methods_defaults_plus_the_fixed_values(alias):
    config = compose_job([f"merge={alias}", "base=/b", "experts=[/e]", "out=/o"])
    target = ALIASES[alias]
    defaults = {field.name: field.default for field in dataclasses.fields(METHODS[target.method].Params)}
    composed = dict(config.merge)
    assert composed.pop("method") == alias
    assert composed == {**defaults, **target.fixed}


def test_help_lists_the_aliases(capsys):
    assert cli(["merge", "--help"]) == 0
    text = capsys.readouterr().out
    assert "dare_ties        = dare combine=ties" in text and "linear           = average" in text


def test_cli_alias_merges_like_the_method_it_names(llama_family, tmp_path):
    experts = llama_family["experts"][:2]
    out = tmp_path / "merged"
    args = [f"base={llama_family['base']}", f"experts=[{','.join(map(str, experts))}]", f"out={out}"]
    assert cli(["merge", "merge=dare_ties", "merge.density=0.5", *args, "progress=false", "device=cpu"]) == 0
    expected = merge(
        llama_family["base"], experts, "dare", combine="ties", density=0.5, device="cpu", progress=False
    )
    (written,) = state_dicts([out])
    assert set(written) == set(expected)
    assert all(torch.equal(written[name], expected[name]) for name in expected)
