"""Weighted parameter averaging: `sum_i w_i theta_i / sum_i w_i` (model soups, the simplest merge)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext


@dataclass(frozen=True)
class AverageParams:
    weights: tuple[float, ...] | None = None


class Average(MergeMethod):
    """Average of the experts' parameters; the base is not used."""

    name = "average"
    Params = AverageParams
    elementwise = True
    uses_base = False

    def validate(self) -> None:
        if self.params.weights is not None and sum(self.params.weights) == 0:
            raise MergeConfigError("method 'average': weights must not sum to 0")

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        weights = self.expert_weights(len(experts))
        total = sum(weights)
        merged = experts[0] * (weights[0] / total)
        for weight, expert in zip(weights[1:], experts[1:]):
            merged.add_(expert, alpha=weight / total)
        return merged
