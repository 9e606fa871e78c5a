"""Model Stock (Jang et al., 2024): move the base toward the experts' average by an angle-derived ratio.

Per tensor, `cos(theta)` is the mean over expert pairs of the cosine between their flattened task vectors;
with N experts, `t = N cos(theta) / (1 + (N - 1) cos(theta))` and the result is
`t * mean_i theta_i + (1 - t) * theta_base` (the paper's per-layer interpolation, mergekit's `model_stock`
without `filter_wise`). At least two experts are needed: one gives no angle.

Two choices where the paper is silent: the cosine of a pair with a zero task vector is 0 (mergekit instead
divides by the norm product clamped to 1e-6, which also shrinks the cosine of small but nonzero task vectors,
so the paper's plain cosine is used); and `cos(theta)` is clamped to [0, 1]. The paper's derivation assumes
experts on a common sphere with a nonnegative angle cosine, so `t` is in [0, 1]; a negative mean cosine
(mergekit keeps it) gives `t < 0` or a zero denominator. Clamped, such a tensor keeps the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import Tensor

from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext


def mean_pairwise_cosine(task_vectors: Sequence[Tensor]) -> float:
    """Mean over pairs of the cosine between flattened task vectors; a pair with a zero vector counts 0."""
    flat = [vector.flatten() for vector in task_vectors]
    norms = [float(vector.norm()) for vector in flat]
    cosines = []
    for i, j in combinations(range(len(flat)), 2):
        product = norms[i] * norms[j]
        cosines.append(float(flat[i] @ flat[j]) / product if product > 0 else 0.0)
    return sum(cosines) / len(cosines)


def stock_ratio(cosine: float, n_experts: int) -> float:
    """The paper's interpolation ratio `N cos / (1 + (N - 1) cos)`, with `cos` clamped to [0, 1]."""
    cosine = min(max(cosine, 0.0), 1.0)
    return n_experts * cosine / (1.0 + (n_experts - 1) * cosine)


@dataclass(frozen=True)
class ModelStockParams:
    pass


class ModelStock(MergeMethod):
    """Model Stock; it has no hyperparameters (the ratio comes from the experts' angle)."""

    name = "model_stock"
    Params = ModelStockParams

    def expert_weights(self, n_experts: int) -> list[float]:
        if n_experts < 2:
            raise MergeConfigError(f"method '{self.name}' needs at least 2 experts, got {n_experts}")
        return super().expert_weights(n_experts)

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        n_experts = len(self.expert_weights(len(experts)))
        ratio = stock_ratio(mean_pairwise_cosine([expert - base for expert in experts]), n_experts)
        average = torch.stack(list(experts)).mean(dim=0)
        return average * ratio + base * (1.0 - ratio)
