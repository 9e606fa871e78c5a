"""The contract between merge methods and the engine.

A method is pure tensor math: it receives one tensor's base value and its experts' values (float32, on
the compute device) plus a small context, and returns the merged float32 tensor. It never reads files.
Methods that need whole-model facts (TIES with `trim_scope: global`) declare it, and the engine computes
those facts in streaming passes and hands them over through `TensorContext`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from mergelab.methods.errors import MergeConfigError, MergeWarning
from mergelab.methods.hparams import checked_hparams

__all__ = ["MergeConfigError", "MergeMethod", "MergeWarning", "TensorContext", "TrimRule"]


@dataclass(frozen=True)
class TrimRule:
    """Where one expert's task vector is cut in one tensor, when the cut was chosen over the whole model.

    Entries with magnitude above `threshold` are kept; of the entries equal to it, the first
    `ties_to_keep` in flattened order are kept too, so that exactly `int(density * n)` survive model-wide.
    """

    threshold: float
    ties_to_keep: int


@dataclass(frozen=True)
class TensorContext:
    """What a method may know about the tensor it merges besides its values.

    `trim` (one rule per expert) and `majority_sign` are set by the engine only for methods whose
    `needs_global_trim` is true; otherwise the method derives both from the tensor itself.
    `statistics` (one per expert, float32 on the compute device, None where the expert's statistic does not
    cover this tensor) and `statistic_norms` (the L2 norm of each expert's whole statistic) are set only for
    methods that declare a `statistic`.
    """

    name: str
    trim: tuple[TrimRule, ...] | None = None
    majority_sign: float | None = None
    statistics: tuple[Tensor | None, ...] | None = None
    statistic_norms: tuple[float, ...] | None = None


class MergeMethod(ABC):
    """A merge method: validated hyperparameters plus a per-tensor merge function.

    Subclasses set `name`, a frozen dataclass `Params` holding the hyperparameters with their paper
    defaults, and implement `merge`.
    """

    name: ClassVar[str]
    Params: ClassVar[type]
    uses_base: ClassVar[bool] = True
    # The per-expert statistic a data-aware method merges with ("fisher", "gram"; see mergelab.stats), or None.
    statistic: ClassVar[str | None] = None
    # The merged value of an entry depends only on that entry's values (given the trim context), so the
    # engine may merge a large tensor slice by slice (`mergelab.engine.blockwise`).
    elementwise: ClassVar[bool] = False
    # The method trims task vectors by magnitude with `TrimRule`s (tensor scope or model-wide).
    trims: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        valid = [field.name for field in dataclasses.fields(self.Params)]
        unknown = sorted(set(hparams) - set(valid))
        if unknown:
            raise MergeConfigError(
                f"unknown hyperparameter(s) {unknown} for method '{self.name}'; valid: {valid}"
            )
        self.params = self.Params(**checked_hparams(self.name, self.Params, hparams))
        self.validate()

    def validate(self) -> None:
        """Raise MergeConfigError for hyperparameter values outside their domain."""

    @property
    def needs_global_trim(self) -> bool:
        """True when the engine must compute model-wide trim rules and majority sign first."""
        return False

    def statistic_request(self) -> Mapping[str, Any]:
        """For a method with a `statistic`: `n_examples`, `seed` and the `settings` that change the statistic's
        numbers (they key its cache entry); see `mergelab.stats.StatisticRequest`."""
        return {}

    @property
    def density(self) -> float:
        """Fraction of each task vector kept by trimming (used by the engine for global trim)."""
        return 1.0

    def expert_densities(self, n_experts: int) -> list[float]:
        """The fraction of each expert's task vector that trimming keeps (all `density` unless the method
        takes one density per expert, as mergekit's per-model `density`)."""
        return [self.density] * n_experts

    def elected_sign_total(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> float:
        """Sum of this tensor's elected signs before zero resolution (global majority-sign pass)."""
        raise NotImplementedError(f"method '{self.name}' has no sign election")

    @abstractmethod
    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        """Merge one tensor: float32 in, float32 out, same shape as `base`."""

    def expert_weights(self, n_experts: int) -> list[float]:
        """The per-expert weights, checked against the number of experts (all 1 when unset)."""
        weights = getattr(self.params, "weights", None)
        if weights is None:
            return [1.0] * n_experts
        if len(weights) != n_experts:
            raise MergeConfigError(
                f"method '{self.name}': weights has {len(weights)} entries for {n_experts} experts"
            )
        return [float(weight) for weight in weights]

    def describe(self) -> Mapping[str, Any]:
        """The method name and every hyperparameter value, for logs and result rows."""
        return {"method": self.name, **dataclasses.asdict(self.params)}
