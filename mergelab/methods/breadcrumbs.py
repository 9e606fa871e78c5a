"""Model Breadcrumbs (Davari & Belilovsky, 2023): drop each task vector's outliers and its negligible entries.

Per tensor and per expert, with n entries ranked by magnitude (largest first), the top `int(gamma * n)`
entries (the paper's beta, the outliers) and the entries below rank `int(gamma * n) + int(density * n)` are
set to zero, so exactly `int(density * n)` entries survive, as mergekit's `breadcrumbs` (its `gamma`,
`density`); when `gamma` and `density` add up to more than 1 fewer outliers are dropped so that the
`density` fraction still survives (mergekit's rule). Ties at either cut follow trimming's rule: flattened
order ranks an earlier entry higher. The sparse task vectors are combined by task arithmetic,
`theta_base + scale * sum_i w_i tau_i` (`combine: linear`, the paper and mergekit's `breadcrumbs`), or with
TIES sign election (sign of the sum of the sparse values, zeros to the tensor's majority) and the weighted
sum of the agreeing entries (`combine: ties`, mergekit's `breadcrumbs_ties` with its default
`normalize: false`). Expert weights scale the task vectors after sign election, as in `ties` (mergekit
elects on weighted values).

Unlike mergekit, a tensor with `int(gamma * n) = 0` keeps its `density` fraction: mergekit's slice
`[n_bottom:-n_top]` is empty when `n_top` is 0, which drops every entry of tensors under `1 / gamma` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.methods.base import MergeMethod, TensorContext
from mergelab.methods.options import check_real, check_weights
from mergelab.methods.ties import check_choice, disjoint_merge, elect_sign, sign_votes
from mergelab.methods.trim import count_trim_rule, keep_count, keep_mask

COMBINES = ("linear", "ties")


def breadcrumbs_mask(magnitude: Tensor, density: float, gamma: float) -> Tensor:
    """Boolean mask keeping exactly `int(density * n)` entries after the top `int(gamma * n)` outliers."""
    n_entries = magnitude.numel()
    keep = keep_count(n_entries, density)
    outliers = min(keep_count(n_entries, gamma), n_entries - keep)
    up_to_cut = keep_mask(magnitude, count_trim_rule(magnitude, outliers + keep))
    return up_to_cut & ~keep_mask(magnitude, count_trim_rule(magnitude, outliers))


@dataclass(frozen=True)
class BreadcrumbsParams:
    density: float = 0.1
    gamma: float = 0.01
    scale: float = 1.0
    combine: str = "linear"
    weights: tuple[float, ...] | None = None


class Breadcrumbs(MergeMethod):
    """Model Breadcrumbs; defaults: drop the top 1% (`gamma` 0.01, mergekit's default for the paper's beta)
    and keep the next 10% (`density` 0.1, so about 90% of each task vector is masked), scale 1 (mergekit's
    `lambda`), linear combine."""

    name = "breadcrumbs"
    Params = BreadcrumbsParams

    def validate(self) -> None:
        check_real(self.name, "density", self.params.density, 0.0, 1.0, low_open=True)
        check_real(self.name, "gamma", self.params.gamma, 0.0, 1.0)
        check_real(self.name, "scale", self.params.scale)
        check_choice(self.name, "combine", self.params.combine, COMBINES)
        check_weights(self.name, self.params.weights)

    def sparse_task_vectors(self, base: Tensor, experts: Sequence[Tensor]) -> Tensor:
        """Stack of task vectors (experts x tensor) with outliers and negligible entries set to zero."""
        task_vectors = torch.stack(list(experts))
        task_vectors -= base
        for task_vector in task_vectors:
            task_vector.mul_(breadcrumbs_mask(task_vector.abs(), self.params.density, self.params.gamma))
        return task_vectors

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        task_vectors = self.sparse_task_vectors(base, experts)
        elected = elect_sign(sign_votes(task_vectors, "sum"), None) if self.params.combine == "ties" else None
        # With no elected sign this is the plain weighted sum of the sparse task vectors.
        merged = disjoint_merge(task_vectors, elected, self.expert_weights(len(experts)), "sum")
        return base + self.params.scale * merged
