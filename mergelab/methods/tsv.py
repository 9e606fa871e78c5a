"""TSV-Merge (Gargiulo et al., 2025, "Task Singular Vectors"): low-rank task matrices, decorrelated, summed.

For each 2-D tensor with N experts: the thin SVD `tau_i = U_i S_i V_i^T` of every task matrix keeps its top
`k = min(rows, cols) // N` singular components (the authors' `R // N_tasks`); the kept `U_i` are
concatenated side by side into `U`, the `V_i` into `V`, the singular values into `S`; `U` and `V` are
replaced by their nearest orthonormal matrices (orthogonal Procrustes, `U_perp = P Q^T` from `svd(U)`), which
removes the interference between tasks' singular vectors; the merged task matrix is `U_perp S V_perp^T` and
the result `theta_base + scale * merged`. Tensors that are not 2-D (biases, norms) take the mean of the task
vectors, as the authors' code (`torch.mean` over tasks), so `theta_base + scale * mean_i tau_i`. With more
experts than `min(rows, cols)`, `k` is 0 and the matrix keeps the base.

Components whose singular value is zero to rounding (a low-rank task matrix, e.g. a LoRA update) are left
out: their singular vectors are arbitrary and would move the others through the orthogonalization; for
full-rank task matrices this changes nothing. When experts' singular vectors are linearly dependent (two
identical experts) the orthogonalization itself is not unique, as in the authors' code.

Default `scale` 1.0, the paper's alpha; the authors' evaluation script also sweeps it over (0, 3] on
validation data, which `select=validation` with a `select_grid.tsv.scale` grid reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.methods.base import MergeMethod, TensorContext
from mergelab.methods.options import check_real
from mergelab.methods.spectral import numerical_rank, polar_factor


def task_singular_vector_merge(task_matrices: Sequence[Tensor]) -> Tensor:
    """The decorrelated sum of the task matrices' top `min(shape) // N` singular components."""
    shape = task_matrices[0].shape
    per_task = min(shape) // len(task_matrices)
    lefts, values, rights = [], [], []
    for matrix in task_matrices:
        left, singular, right_t = torch.linalg.svd(matrix, full_matrices=False)
        kept = min(per_task, numerical_rank(singular, shape))
        lefts.append(left[:, :kept])
        values.append(singular[:kept])
        rights.append(right_t[:kept])
    singular_values = torch.cat(values)
    if singular_values.numel() == 0:
        return torch.zeros_like(task_matrices[0])
    left_perp = polar_factor(torch.cat(lefts, dim=1))
    right_perp_t = polar_factor(torch.cat(rights, dim=0))
    return (left_perp * singular_values) @ right_perp_t


@dataclass(frozen=True)
class TsvParams:
    scale: float = 1.0


class Tsv(MergeMethod):
    """TSV-Merge (TSV-M): whole 2-D tensors, SVD per task matrix; scale 1.0 as the paper."""

    name = "tsv"
    Params = TsvParams

    def validate(self) -> None:
        check_real(self.name, "scale", self.params.scale)

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        task_vectors = [expert - base for expert in experts]
        if base.dim() == 2:
            merged = task_singular_vector_merge(task_vectors)
        else:
            merged = torch.stack(task_vectors).mean(dim=0)
        return base + self.params.scale * merged
