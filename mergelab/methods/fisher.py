"""Fisher merging (Matena & Raffel, 2022): `sum_i w_i F_i theta_i / sum_i w_i F_i`, entry by entry.

`F_i` is expert i's diagonal Fisher on its own task data (`mergelab.stats.fisher`), handed over by the engine
in `TensorContext.statistics`. With `normalize` (the authors' default) each expert's Fisher is first divided
by its L2 norm over the whole model, so experts whose Fishers differ in overall scale weigh alike.

Floor: every expert's (normalized) Fisher is raised to at least `fisher_floor` before weighting. An entry no
expert informs (all Fishers below the floor) therefore gets exactly the plain weighted average
`sum_i w_i theta_i / sum_i w_i`, and the rule treats all experts alike. The authors' code floors only the
first ("target") model's Fisher, which makes such entries copy the first model; we floor every expert so
the result does not depend on the experts' order.

Tensors the Fisher does not cover (a float tensor absent from some expert's statistic, e.g. a buffer stored
in the checkpoint, or a weight stored twice under a second name) get the plain weighted average too;
non-float tensors are copied from the base by the engine, as for every method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mergelab.methods.average import Average
from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext

ESTIMATORS = ("expected", "empirical")


@dataclass(frozen=True)
class FisherParams:
    n_examples: int = 4096
    fisher: str = "expected"
    normalize: bool = True
    fisher_floor: float = 1e-6
    seed: int = 0
    weights: tuple[float, ...] | None = None


class Fisher(MergeMethod):
    """Fisher-weighted averaging; the base is not used.

    Defaults follow the authors' code (mmatena/model_merging): 4096 examples, the expected Fisher over the
    model's own predictive distribution, L2-normalized Fishers, floor 1e-6.
    """

    name = "fisher"
    Params = FisherParams
    uses_base = False
    statistic = "fisher"

    def validate(self) -> None:
        params = self.params
        if params.fisher not in ESTIMATORS:
            raise MergeConfigError(f"method 'fisher': fisher={params.fisher!r}; valid: {list(ESTIMATORS)}")
        if params.n_examples < 1:
            raise MergeConfigError(f"method 'fisher': n_examples={params.n_examples} must be >= 1")
        if not params.fisher_floor > 0:
            raise MergeConfigError(f"method 'fisher': fisher_floor={params.fisher_floor} must be > 0")
        if params.weights is not None and (any(w < 0 for w in params.weights) or sum(params.weights) == 0):
            raise MergeConfigError("method 'fisher': weights must be >= 0 and not all 0")

    def statistic_request(self) -> Mapping[str, Any]:
        return {
            "n_examples": self.params.n_examples,
            "seed": self.params.seed,
            "settings": {"estimator": self.params.fisher},
        }

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        weights = self.expert_weights(len(experts))
        fishers = context.statistics
        if fishers is None or any(fisher is None for fisher in fishers):
            return Average(weights=tuple(weights)).merge(base, experts, context)
        norms = context.statistic_norms or (1.0,) * len(experts)
        numerator = base.new_zeros(base.shape)
        denominator = base.new_zeros(base.shape)
        for weight, expert, fisher, norm in zip(weights, experts, fishers, norms):
            scaled = fisher / norm if self.params.normalize and norm > 0 else fisher
            weighted = scaled.clamp(min=self.params.fisher_floor).mul_(weight)
            denominator.add_(weighted)
            numerator.addcmul_(weighted, expert)
        return numerator.div_(denominator)
