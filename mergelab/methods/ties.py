"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

Each task vector keeps its top `density` fraction of entries by magnitude (over the whole model or per
tensor); each entry's sign is elected from the trimmed values (sign of their sum, or majority of their
signs); entries whose vote is zero take the majority sign over the trimming scope, as the authors' code
does; the kept entries that agree with the elected sign are averaged (`agg: mean`, the paper) or summed;
expert weights scale the task vectors after election; the result is `theta_base + scale * merged`.

Two options exist for the paper's ablation (its Table 6, one step removed at a time): `elect: false` skips
sign election, so every kept entry of either sign enters the disjoint mean ("w/o elect": the authors' code
with sign resolution `none`, which averages the nonzero entries); `agg: mean_all` divides the sum of the
agreeing entries by the number (total weight) of experts instead of by the agreeing ones, so trimmed and
disagreeing entries count as zeros ("w/o disjoint mean": the mean of the values with the elected sign and
0 for the trimmed ones). "w/o trim" is `density: 1.0`; "w/o scale" is `scale: 1` without a scale search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext, TrimRule
from mergelab.methods.trim import keep_mask, tensor_trim_rule

TRIM_SCOPES = ("global", "tensor")
SIGN_RULES = ("sum", "count")
AGGREGATIONS = ("mean", "sum", "mean_all")


def check_choice(method: str, option: str, value: str, allowed: Sequence[str]) -> None:
    """Raise MergeConfigError when `value` is not one of `allowed`."""
    if value not in allowed:
        raise MergeConfigError(f"method '{method}': {option}={value!r} is not one of {list(allowed)}")


def check_density(method: str, density: float | Sequence[float]) -> None:
    """Raise MergeConfigError when `density` (or any of a per-expert list of them) is outside (0, 1]."""
    values = density if isinstance(density, Sequence) and not isinstance(density, str) else [density]
    if not values or not all(0.0 < value <= 1.0 for value in values):
        raise MergeConfigError(f"method '{method}': density={density} must be in (0, 1]")


def check_disjoint_mean_weights(method: str, weights: Sequence[float] | None) -> None:
    """Raise MergeConfigError when the disjoint mean could divide by zero.

    The mean divides each entry by the total weight of the experts that agree on it, which can be any subset
    of them: weights with mixed signs such as [1, -1] make some subsets sum to 0 (the division would blow up
    to ~1e36). A subset of zero weights only is harmless (its numerator is 0 too).
    """
    if weights is None or all(weight >= 0 for weight in weights) or all(weight <= 0 for weight in weights):
        if weights is not None and not any(weights):
            raise MergeConfigError(f"method '{method}': weights={list(weights)} are all 0")
        return
    nonzero = [weight for weight in weights if weight != 0]
    if len(nonzero) > 16:
        raise MergeConfigError(f"method '{method}': weights of mixed signs are checked for up to 16 experts")
    for mask in range(1, 1 << len(nonzero)):
        subset = [weight for index, weight in enumerate(nonzero) if mask >> index & 1]
        if len(subset) > 1 and math.isclose(sum(subset), 0.0, abs_tol=1e-12):
            raise MergeConfigError(
                f"method '{method}': weights={list(weights)}: the experts weighted {subset} sum to 0, and the "
                "disjoint mean divides each entry by the weight of the experts agreeing on it"
            )


def per_expert_densities(method: str, density: float | Sequence[float], n_experts: int) -> list[float]:
    """`density` for each of `n_experts`: one value for all, or a list with one value per expert."""
    if not isinstance(density, Sequence):
        return [float(density)] * n_experts
    if len(density) != n_experts:
        raise MergeConfigError(
            f"method '{method}': density has {len(density)} entries for {n_experts} experts"
        )
    return [float(value) for value in density]


def sign_votes(task_vectors: Tensor, sign: str) -> Tensor:
    """Per-entry vote over experts (dim 0): the sum of values (`sum`) or of their signs (`count`)."""
    if sign == "sum":
        return task_vectors.sum(dim=0)
    return task_vectors.sign().sum(dim=0)


def elect_sign(votes: Tensor, majority_sign: float | None) -> Tensor:
    """Sign of each vote; zero votes take `majority_sign` (default: sign of this tensor's elected signs)."""
    elected = votes.sign()
    if majority_sign is None:
        majority_sign = float(elected.sum().sign().item())
    elected[elected == 0] = majority_sign if majority_sign != 0 else 1.0
    return elected


def disjoint_merge(
    task_vectors: Tensor, elected: Tensor | None, weights: Sequence[float], agg: str
) -> Tensor:
    """Aggregate the nonzero entries that agree with `elected` (all nonzero entries when it is None).

    `sum`: their weighted sum; `mean`: their weighted mean (divided by the agreeing experts' weights);
    `mean_all`: their weighted sum divided by the total weight of all experts. Overwrites `task_vectors`
    (callers pass stacks they own) so no second experts-sized buffer is needed.
    """
    if elected is None:
        agrees = task_vectors != 0
    else:
        agrees = torch.where(elected > 0, task_vectors > 0, task_vectors < 0)
        task_vectors.mul_(agrees)
    if any(weight != 1.0 for weight in weights):
        shape = (-1, *([1] * (task_vectors.dim() - 1)))
        task_vectors.mul_(
            torch.tensor(weights, dtype=task_vectors.dtype, device=task_vectors.device).view(shape)
        )
    merged = task_vectors.sum(dim=0)
    if agg == "mean":
        total_weight = torch.zeros_like(merged)
        for agree, weight in zip(agrees, weights):
            total_weight.add_(agree, alpha=weight)
        merged /= total_weight.clamp(min=torch.finfo(merged.dtype).tiny)
    elif agg == "mean_all":
        merged /= sum(weights)
    return merged


@dataclass(frozen=True)
class TiesParams:
    density: float | tuple[float, ...] = 0.2  # a list: one density per expert (trim_scope tensor only)
    scale: float = 1.0
    trim_scope: str = "global"
    sign: str = "sum"
    elect: bool = True
    agg: str = "mean"
    weights: tuple[float, ...] | None = None


class Ties(MergeMethod):
    """TIES-Merging; defaults follow the paper (density 0.2, scale 1, global trimming, sum sign, elected
    sign, disjoint mean)."""

    name = "ties"
    Params = TiesParams
    elementwise = True
    trims = True

    def validate(self) -> None:
        check_density(self.name, self.params.density)
        check_choice(self.name, "trim_scope", self.params.trim_scope, TRIM_SCOPES)
        if isinstance(self.params.density, Sequence) and self.needs_global_trim:
            raise MergeConfigError(
                f"method '{self.name}': one density per expert needs trim_scope='tensor' (global trimming "
                "keeps one fraction of the whole model)"
            )
        check_choice(self.name, "sign", self.params.sign, SIGN_RULES)
        check_choice(self.name, "agg", self.params.agg, AGGREGATIONS)
        weights = self.params.weights
        if self.params.agg == "mean_all" and weights is not None and sum(weights) == 0:
            raise MergeConfigError(f"method '{self.name}': agg='mean_all' needs weights with a nonzero sum")
        if self.params.agg == "mean":
            check_disjoint_mean_weights(self.name, weights)

    @property
    def needs_global_trim(self) -> bool:
        return self.params.trim_scope == "global"

    @property
    def density(self) -> float:
        return self.params.density

    def expert_densities(self, n_experts: int) -> list[float]:
        return per_expert_densities(self.name, self.params.density, n_experts)

    def expert_weights(self, n_experts: int) -> list[float]:
        self.expert_densities(n_experts)  # a per-expert density list is checked with the weights
        return super().expert_weights(n_experts)

    def trimmed_task_vectors(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        """Stack of task vectors (experts x tensor) with the trimmed entries set to zero."""
        task_vectors = torch.stack(list(experts))
        task_vectors -= base
        densities = self.expert_densities(len(experts))
        for index, task_vector in enumerate(task_vectors):
            magnitude = task_vector.abs()
            rule = self._trim_rule(magnitude, index, densities[index], context)
            task_vector.mul_(keep_mask(magnitude, rule))
        return task_vectors

    def _trim_rule(self, magnitude: Tensor, index: int, density: float, context: TensorContext) -> TrimRule:
        if context.trim is not None:
            return context.trim[index]
        if self.needs_global_trim:
            raise ValueError(f"tensor '{context.name}': global trimming needs the engine's trim rules")
        return tensor_trim_rule(magnitude, density)

    def elected_sign_total(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> float:
        votes = sign_votes(self.trimmed_task_vectors(base, experts, context), self.params.sign)
        return float(votes.sign().sum().item())

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        task_vectors = self.trimmed_task_vectors(base, experts, context)
        elected = (
            elect_sign(sign_votes(task_vectors, self.params.sign), context.majority_sign)
            if self.params.elect
            else None
        )
        merged = disjoint_merge(task_vectors, elected, self.expert_weights(len(experts)), self.params.agg)
        return base + self.params.scale * merged
