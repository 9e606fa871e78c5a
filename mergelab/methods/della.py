"""DELLA-Merging (Deep et al., 2024): MagPrune (magnitude-ranked random drop), rescale, elect, fuse.

MagPrune, per expert and per row of the task vector (a 2-D tensor's rows; a 1-D tensor is one row; a
higher-dimensional one is flattened to rows along its first dimension): entries are ranked by magnitude
within the row, `r = 0` for the smallest to `r = m - 1` for the largest (equal magnitudes rank by position),
and kept with probability `p_r = density - epsilon + 2 epsilon r / (m - 1)`, so keep probabilities run
linearly from `density - epsilon` to `density + epsilon` (mergekit's `della_magprune` mapping; a one-entry
row keeps with probability `density`). Survivors are divided by their own `p_r`, the paper's rescaling by
`1 / (1 - drop probability)`, which keeps each entry's expectation; mergekit's default instead rescales the
whole tensor to its former L1 norm. Masks come from a CPU generator seeded by (seed, expert index, tensor
name), as DARE's, so results do not depend on device or tensor order.

The sparse task vectors are then fused as in TIES (`combine: ties`, the paper's Elect and Fuse steps:
sign of the sum of the rescaled values, zeros to the tensor's majority, weighted mean of the agreeing
entries, mergekit's `della` with `normalize: true`) or summed with their weights (`combine: linear`,
mergekit's `della_linear`); the result is `theta_base + scale * merged` (`scale` is the paper's and
mergekit's `lambda`). Expert weights scale the task vectors after sign election, as in `ties`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext
from mergelab.methods.dare import mask_seed
from mergelab.methods.options import check_integer, check_real, check_weights
from mergelab.methods.ties import (
    check_choice,
    check_disjoint_mean_weights,
    disjoint_merge,
    elect_sign,
    sign_votes,
)

COMBINES = ("ties", "linear")


def magnitude_rows(tensor: Tensor) -> Tensor:
    """The tensor reshaped into rows: 2-D as is, 1-D (or 0-D) as one row, higher-D flattened per first dim."""
    if tensor.dim() <= 1:
        return tensor.reshape(1, -1)
    return tensor.reshape(tensor.shape[0], -1)


def keep_probabilities(magnitude: Tensor, density: float, epsilon: float) -> Tensor:
    """Per-entry keep probability from its magnitude rank in its row, `density - epsilon` (smallest) to
    `density + epsilon` (largest), same shape as `magnitude`."""
    rows = magnitude_rows(magnitude)
    width = rows.shape[1]
    if width == 1:
        return torch.full_like(magnitude, density)
    order = torch.argsort(rows, dim=1, stable=True)
    ranks = torch.empty_like(rows)
    ranks.scatter_(1, order, torch.arange(width, dtype=rows.dtype, device=rows.device).expand_as(rows))
    return (ranks * (2.0 * epsilon / (width - 1)) + (density - epsilon)).reshape(magnitude.shape)


@dataclass(frozen=True)
class DellaParams:
    density: float = 0.3
    epsilon: float = 0.15
    scale: float = 1.0
    combine: str = "ties"
    seed: int = 0
    weights: tuple[float, ...] | None = None


class Della(MergeMethod):
    """DELLA; defaults: keep 30% on average (`density` 0.3), `epsilon` 0.15 (mergekit's default), scale 1
    (the paper's constant lambda, mergekit's default), TIES fuse."""

    name = "della"
    Params = DellaParams

    def validate(self) -> None:
        check_real(self.name, "density", self.params.density, 0.0, 1.0, low_open=True)
        check_real(self.name, "epsilon", self.params.epsilon, 0.0)
        density, epsilon = self.params.density, self.params.epsilon
        if not (density - epsilon > 0 and density + epsilon <= 1):
            raise MergeConfigError(
                f"method '{self.name}': epsilon={epsilon!r} must leave keep probabilities "
                f"density - epsilon > 0 and density + epsilon <= 1 (density={density!r})"
            )
        check_real(self.name, "scale", self.params.scale)
        check_choice(self.name, "combine", self.params.combine, COMBINES)
        check_integer(self.name, "seed", self.params.seed)
        check_weights(self.name, self.params.weights)
        if self.params.combine == "ties":
            check_disjoint_mean_weights(self.name, self.params.weights)

    def sparse_task_vectors(self, base: Tensor, experts: Sequence[Tensor], name: str) -> Tensor:
        """Stack of MagPruned and rescaled task vectors (experts x tensor)."""
        task_vectors = torch.stack(list(experts))
        task_vectors -= base
        for index, task_vector in enumerate(task_vectors):
            keep = keep_probabilities(task_vector.abs(), self.params.density, self.params.epsilon)
            generator = torch.Generator(device="cpu").manual_seed(mask_seed(self.params.seed, index, name))
            draws = torch.rand(task_vector.shape, generator=generator).to(task_vector.device)
            task_vector.mul_((draws < keep) / keep)
        return task_vectors

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        task_vectors = self.sparse_task_vectors(base, experts, context.name)
        elected = elect_sign(sign_votes(task_vectors, "sum"), None) if self.params.combine == "ties" else None
        agg = "mean" if self.params.combine == "ties" else "sum"
        merged = disjoint_merge(task_vectors, elected, self.expert_weights(len(experts)), agg)
        return base + self.params.scale * merged
