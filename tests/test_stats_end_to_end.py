"""Data-aware methods end to end on the micro zoo: `mergelab merge`, `mergelab.merge` and `mergelab run`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mergelab import zoo
from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.experiment import runner
from mergelab.experiment.sweep import compose
from mergelab.methods.base import MergeConfigError
from mergelab.stats import StatisticRequest, expert_statistic
from tests.conftest import state_dicts
from tests.zoo_fixture import micro_run_overrides

CATEGORIES = ("color", "place")
N_EXAMPLES = 12


@pytest.fixture
def family(micro_zoo, single_torch_thread):
    base = zoo.model_path("micro", "base", "base")
    experts = [zoo.model_path("micro", "base", "expert", category) for category in CATEGORIES]
    return base, experts


def cached(expert, category: str, request: StatisticRequest) -> dict[str, torch.Tensor]:
    """The statistic the merge used, read back independently (and proving it was cached)."""
    result = expert_statistic(expert, f"zoo:{category}", request, progress=False)
    assert result.hit
    return load_file(result.path)


def test_merge_cli_fisher_is_the_fisher_weighted_average_of_cached_fishers(family, tmp_path, capsys):
    base, experts = family
    out = tmp_path / "merged"
    code = cli(
        [
            "merge",
            "merge=fisher",
            f"base={base}",
            f"experts=[{experts[0]},{experts[1]}]",
            "data=[zoo:color,zoo:place]",
            f"out={out}",
            f"merge.n_examples={N_EXAMPLES}",
            "device=cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "fisher expert 0: 12 examples of zoo:color" in printed.err + printed.out
    request = StatisticRequest("fisher", N_EXAMPLES, settings={"estimator": "expected"})
    fishers = [cached(expert, category, request) for expert, category in zip(experts, CATEGORIES)]
    merged, *weights = state_dicts([out, *experts])
    assert set(fishers[0]) == set(merged)  # the Fisher covers every stored tensor of the micro Llama
    norms = [sum(float(t.double().square().sum()) for t in f.values()) ** 0.5 for f in fishers]
    for name, value in merged.items():
        scaled = [torch.clamp(f[name] / norm, min=1e-6) for f, norm in zip(fishers, norms)]
        expected = sum(s * w[name] for s, w in zip(scaled, weights)) / sum(scaled)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-7)


def test_python_api_regmean_solves_with_the_cached_grams(family):
    base, experts = family
    data = [f"zoo:{category}" for category in CATEGORIES]
    merged = merge(base, experts, "regmean", data=data, n_examples=N_EXAMPLES, device="cpu", progress=False)
    grams = [cached(e, c, StatisticRequest("gram", N_EXAMPLES)) for e, c in zip(experts, CATEGORIES)]
    weights = state_dicts(experts)
    name = "model.layers.0.mlp.down_proj.weight"
    shrunk = [0.9 * g[name] + 0.1 * torch.diag(g[name].diagonal()) for g in grams]
    system = sum(shrunk).double()
    right = sum(s.double() @ w[name].T.double() for s, w in zip(shrunk, weights))
    expected = torch.linalg.solve(system, right).T.float()
    torch.testing.assert_close(merged[name], expected, rtol=1e-4, atol=1e-6)
    norm = "model.norm.weight"  # not a linear layer: averaged
    torch.testing.assert_close(merged[norm], (weights[0][norm] + weights[1][norm]) / 2)


def test_data_aware_methods_without_data_and_data_without_them_are_clear_errors(family, tmp_path, capsys):
    base, experts = family
    job = [f"base={base}", f"experts=[{experts[0]},{experts[1]}]", f"out={tmp_path / 'x'}"]
    assert cli(["merge", "merge=fisher", *job]) == 2
    assert "data=[zoo:color,zoo:place]" in capsys.readouterr().err
    assert cli(["merge", "merge=regmean", *job, "data=[zoo:color]"]) == 2
    assert "1 spec(s) for 2 experts" in capsys.readouterr().err
    with pytest.raises(MergeConfigError, match="method 'ties' takes none"):
        merge(base, experts, "ties", data=["zoo:color", "zoo:place"], progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_run_uses_each_zoo_experts_own_data_and_writes_rows(family, tmp_path, method):
    overrides = micro_run_overrides(
        tmp_path, f"merge={method}", f"merge.n_examples={N_EXAMPLES}", "experts.categories=[color,place]"
    )
    rows = runner.run_one(compose(overrides))
    assert len(rows) > 0 and set(rows["method"]) == {method}
    assert set(rows["expert_set"]) == {"color,place"}
    assert rows["value"].between(0, 1).all()
    request = StatisticRequest(method if method == "fisher" else "gram", N_EXAMPLES)
    if method == "fisher":
        request = StatisticRequest("fisher", N_EXAMPLES, settings={"estimator": "expected"})
    for expert, category in zip(family[1], CATEGORIES):
        assert expert_statistic(expert, f"zoo:{category}", request, progress=False).hit
