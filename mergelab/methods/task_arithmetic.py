"""Task arithmetic (Ilharco et al., 2023): `theta_base + scale * sum_i w_i (theta_i - theta_base)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergelab.methods.base import MergeMethod, TensorContext


@dataclass(frozen=True)
class TaskArithmeticParams:
    scale: float = 0.4
    weights: tuple[float, ...] | None = None


class TaskArithmetic(MergeMethod):
    """Adds the scaled sum of task vectors to the base.

    The default `scale` 0.4 is the value the TIES paper recommends for task arithmetic when no validation
    set is available.
    """

    name = "task_arithmetic"
    Params = TaskArithmeticParams
    elementwise = True

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        weights = self.expert_weights(len(experts))
        summed = base.new_zeros(base.shape)
        for weight, expert in zip(weights, experts):
            summed.add_(expert - base, alpha=weight)
        return base + self.params.scale * summed
