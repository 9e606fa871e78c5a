"""The shared least-squares solver against a direct lstsq on random linear problems."""

import pytest
import torch

from mergelab.methods.least_squares import solve_least_squares


def test_recovers_the_generating_weight_and_matches_lstsq():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    outputs = inputs @ weight.T + 0.1 * torch.randn(64, 3, generator=generator, dtype=torch.float64)
    solved = solve_least_squares(inputs.T @ inputs, inputs.T @ outputs)
    direct = torch.linalg.lstsq(inputs, outputs).solution.T
    assert torch.allclose(solved, direct, atol=1e-10)


def test_ridge_shrinks_towards_zero_as_the_closed_form_says():
    gram = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    cross = torch.tensor([[2.0], [4.0]])
    assert torch.allclose(solve_least_squares(gram, cross, ridge=2.0), torch.tensor([[0.5, 2.0 / 3.0]]))


def test_singular_gram_without_ridge_names_the_fix():
    with pytest.raises(ValueError, match="ridge > 0"):
        solve_least_squares(torch.zeros(2, 2), torch.ones(2, 1))
