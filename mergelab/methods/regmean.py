"""RegMean (Jin et al., 2023): merge each linear layer so it best reproduces every expert's outputs.

For a linear layer with weights `W_i` and Gram matrices `G_i = X_i^T X_i / n` of its inputs on expert i's
data (`mergelab.stats.gram`), the merged weight minimizes `sum_i ||X_i W^T - X_i W_i^T||^2`:
`W = (sum_i G_i)^-1 sum_i G_i W_i`, solved by `mergelab.methods.least_squares.solve_least_squares`.
Before summing, the off-diagonal entries of each `G_i` are multiplied by `alpha` (the paper's
regularization toward the plain average: alpha = 0 gives a per-input-unit weighted average, alpha = 1 the
exact least-squares solution). Tensors without a Gram matrix (biases, norms, embeddings, a tied `lm_head`)
are averaged; non-float tensors are copied from the base by the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mergelab.methods.average import Average
from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext
from mergelab.methods.least_squares import solve_least_squares


@dataclass(frozen=True)
class RegMeanParams:
    n_examples: int = 1000
    alpha: float = 0.9
    ridge: float = 0.0
    seed: int = 0


def shrink_off_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """`alpha * gram + (1 - alpha) * diag(gram)`: off-diagonal entries scaled by alpha, diagonal kept."""
    shrunk = gram * alpha
    shrunk.diagonal().copy_(gram.diagonal())
    return shrunk


class RegMean(MergeMethod):
    """Regression-mean merging of linear layers; the base is not used.

    `alpha` 0.9 and 1000 examples per expert: see conf/merge/regmean.yaml for where these come from.
    `ridge` adds `ridge * I` to the summed Gram matrix (0 as the paper; raise it if a layer's inputs span
    too few directions for the sum to be invertible).
    """

    name = "regmean"
    Params = RegMeanParams
    uses_base = False
    statistic = "gram"

    def validate(self) -> None:
        if not 0 <= self.params.alpha <= 1:
            raise MergeConfigError(f"method 'regmean': alpha={self.params.alpha} must be in [0, 1]")
        if self.params.n_examples < 1:
            raise MergeConfigError(f"method 'regmean': n_examples={self.params.n_examples} must be >= 1")
        if self.params.ridge < 0:
            raise MergeConfigError(f"method 'regmean': ridge={self.params.ridge} must be >= 0")

    def statistic_request(self) -> Mapping[str, Any]:
        return {"n_examples": self.params.n_examples, "seed": self.params.seed, "settings": {}}

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        grams = context.statistics
        if base.dim() != 2 or grams is None or any(gram is None for gram in grams):
            return Average().merge(base, experts, context)
        if any(tuple(gram.shape) != (base.shape[1],) * 2 for gram in grams):
            raise MergeConfigError(
                f"method 'regmean': tensor '{context.name}' {tuple(base.shape)} does not fit its Gram "
                f"matrices {[tuple(gram.shape) for gram in grams]}"
            )
        # float64 sums: a Gram matrix of few examples is ill-conditioned, and the solve amplifies rounding
        summed = torch.zeros(grams[0].shape, dtype=torch.float64, device=base.device)
        cross = torch.zeros(base.shape[1], base.shape[0], dtype=torch.float64, device=base.device)
        for gram, expert in zip(grams, experts):
            shrunk = shrink_off_diagonal(gram.double(), self.params.alpha)
            summed.add_(shrunk)
            cross.addmm_(shrunk, expert.T.double())
        try:
            return solve_least_squares(summed, cross, self.params.ridge).to(base.dtype)
        except ValueError as error:
            raise MergeConfigError(f"method 'regmean': tensor '{context.name}': {error}") from None
