"""RegMean: the merge against an independent least-squares fit, its limits, and the Gram statistic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mergelab.methods import TensorContext, get_method
from mergelab.methods.base import MergeConfigError
from mergelab.methods.regmean import shrink_off_diagonal
from mergelab.stats.encode import EncodedExample
from mergelab.stats.gram import gram_matrices
from tests.conftest import tiny_llama


def regmean(experts, grams, name: str = "layer.weight", **hparams) -> torch.Tensor:
    context = TensorContext(name=name, statistics=tuple(grams), statistic_norms=(1.0,) * len(grams))
    return get_method("regmean", **hparams).merge(torch.zeros_like(experts[0]), experts, context)


def linear_family(seed: int = 0, n_experts: int = 3, inputs: int = 5, outputs: int = 4):
    generator = torch.Generator().manual_seed(seed)
    features = [torch.randn(10 + 7 * index, inputs, generator=generator) for index in range(n_experts)]
    weights = [torch.randn(outputs, inputs, generator=generator) for _ in range(n_experts)]
    return features, weights


def test_alpha_one_equals_the_least_squares_fit_of_all_experts_outputs():
    """min_W sum_i ||X_i W^T - X_i W_i^T||^2 / n_i, solved by lstsq on the stacked, scaled rows."""
    features, weights = linear_family()
    grams = [x.T @ x / len(x) for x in features]
    merged = regmean(weights, grams, alpha=1.0)
    scaled = [x / len(x) ** 0.5 for x in features]
    inputs = torch.cat(scaled).double()
    targets = torch.cat([x @ w.T for x, w in zip(scaled, weights)]).double()
    expected = torch.linalg.lstsq(inputs, targets).solution.T.float()
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-5)


def test_equal_grams_give_the_average_and_alpha_zero_a_per_input_weighted_mean():
    features, weights = linear_family(seed=1)
    gram = features[0].T @ features[0] / len(features[0])
    torch.testing.assert_close(
        regmean(weights, [gram] * 3, alpha=0.5), sum(weights) / 3, rtol=1e-4, atol=1e-5
    )
    grams = [x.T @ x / len(x) for x in features]
    diagonals = torch.stack([g.diagonal() for g in grams])  # experts x inputs
    expected = sum(w * d for w, d in zip(weights, diagonals)) / diagonals.sum(0)
    torch.testing.assert_close(regmean(weights, grams, alpha=0.0), expected, rtol=1e-4, atol=1e-5)


def test_shrink_scales_only_off_diagonal_entries():
    gram = torch.tensor([[4.0, 2.0], [2.0, 9.0]])
    torch.testing.assert_close(shrink_off_diagonal(gram, 0.25), torch.tensor([[4.0, 0.5], [0.5, 9.0]]))


def test_tensors_without_grams_are_averaged_and_bad_input_is_named():
    experts = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    torch.testing.assert_close(regmean(experts, [None, None], name="norm.weight"), torch.tensor([2.0, 3.0]))
    _, weights = linear_family(n_experts=2)
    with pytest.raises(MergeConfigError, match="layer.weight"):
        regmean(weights, [torch.eye(3), torch.eye(3)])
    singular = torch.zeros(5, 5)
    with pytest.raises(MergeConfigError, match="ridge"):
        regmean(weights, [singular, singular], alpha=1.0)
    torch.testing.assert_close(
        regmean(weights, [torch.eye(5)] * 2, ridge=1e-3), sum(weights) / 2, rtol=1e-3, atol=1e-3
    )
    with pytest.raises(MergeConfigError, match="alpha"):
        get_method("regmean", alpha=1.5)


def test_gram_matrices_match_inputs_computed_without_hooks_or_padding(single_torch_thread):
    model = tiny_llama(seed=3, tie=True).eval()
    examples = [
        EncodedExample([5, 6, 7], [[8, 9]], 0, False),
        EncodedExample([10], [[11, 12, 13, 14], [15]], 1, True),  # labelled answer: [15]
    ]
    grams = gram_matrices(model, SimpleNamespace(pad_token_id=0, eos_token_id=1), examples, progress=False)
    assert (
        "model.layers.0.self_attn.q_proj.weight" in grams and "model.layers.1.mlp.down_proj.weight" in grams
    )
    assert "lm_head.weight" not in grams  # tied to the embedding: merged by the fallback rule
    rows = [[5, 6, 7, 8, 9], [10, 15]]
    with torch.no_grad():
        inputs = [
            model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor(row))) for row in rows
        ]
    stacked = torch.cat(inputs)
    expected = stacked.T @ stacked / len(stacked)
    torch.testing.assert_close(
        grams["model.layers.0.self_attn.q_proj.weight"], expected, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        grams["model.layers.0.self_attn.k_proj.weight"], expected, rtol=1e-4, atol=1e-6
    )
