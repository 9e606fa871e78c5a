"""DARE (Yu et al., 2024): drop each task-vector entry with probability `1 - density`, rescale survivors.

Survivors are multiplied by `1 / density` so each task vector keeps its expectation; the sparse task
vectors are then combined by task arithmetic (`combine: linear`) or by TIES sign election and disjoint mean
(`combine: ties`). Masks come from a CPU generator seeded by (seed, expert index, tensor name), so a merge
gives the same result on any device and in any tensor order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.methods.base import MergeMethod, TensorContext
from mergelab.methods.ties import (
    check_choice,
    check_density,
    check_disjoint_mean_weights,
    disjoint_merge,
    elect_sign,
    per_expert_densities,
    sign_votes,
)

COMBINES = ("linear", "ties")


def mask_seed(seed: int, expert_index: int, tensor_name: str) -> int:
    """A 63-bit generator seed that depends only on (seed, expert index, tensor name)."""
    digest = hashlib.sha256(f"{seed}/{expert_index}/{tensor_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def keep_mask(shape: torch.Size, density: float, seed: int) -> Tensor:
    """Bernoulli(`density`) mask drawn on the CPU from `seed`."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(shape, generator=generator) < density


@dataclass(frozen=True)
class DareParams:
    density: float | tuple[float, ...] = 0.1  # a list: one density per expert
    scale: float = 1.0
    combine: str = "linear"
    seed: int = 0
    weights: tuple[float, ...] | None = None


class Dare(MergeMethod):
    """DARE; the default drop rate 0.9 (density 0.1) and linear combine follow the DARE paper."""

    name = "dare"
    Params = DareParams

    def validate(self) -> None:
        check_density(self.name, self.params.density)
        check_choice(self.name, "combine", self.params.combine, COMBINES)
        if self.params.combine == "ties":
            check_disjoint_mean_weights(self.name, self.params.weights)

    def expert_densities(self, n_experts: int) -> list[float]:
        return per_expert_densities(self.name, self.params.density, n_experts)

    def expert_weights(self, n_experts: int) -> list[float]:
        self.expert_densities(n_experts)  # a per-expert density list is checked with the weights
        return super().expert_weights(n_experts)

    def sparse_task_vectors(self, base: Tensor, experts: Sequence[Tensor], name: str) -> Tensor:
        """Stack of dropped and rescaled task vectors (experts x tensor)."""
        task_vectors = torch.stack(list(experts))
        task_vectors -= base
        for index, (task_vector, density) in enumerate(
            zip(task_vectors, self.expert_densities(len(experts)))
        ):
            if density == 1.0:
                continue
            mask = keep_mask(task_vector.shape, density, mask_seed(self.params.seed, index, name))
            task_vector.mul_(mask.to(task_vector.device)).div_(density)
        return task_vectors

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        task_vectors = self.sparse_task_vectors(base, experts, context.name)
        weights = self.expert_weights(len(experts))
        if self.params.combine == "linear":
            column = torch.tensor(weights, dtype=base.dtype, device=base.device).view(-1, *([1] * base.dim()))
            merged = (task_vectors * column).sum(dim=0)
        else:
            elected = elect_sign(sign_votes(task_vectors, "sum"), None)
            merged = disjoint_merge(task_vectors, elected, weights, "mean")
        return base + self.params.scale * merged
