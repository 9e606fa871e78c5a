"""Iso-C (Marczak et al., 2025, "No Task Left Behind: Isotropic Model Merging"): flatten the spectrum.

For each 2-D tensor the task matrices are summed, `M = sum_i tau_i`; with the thin SVD `M = U S V^T` and
`sigma_bar` the mean of all `min(rows, cols)` singular values, the merged task matrix is
`sigma_bar U V^T` (every direction of the sum's common subspace gets the same weight) and the result
`theta_base + scale * merged`. Tensors that are not 2-D take the mean of the task vectors, as the authors'
code (`sum(tvs) / len(tvs)`), so `theta_base + scale * mean_i tau_i`.

When `M` is rank-deficient (low-rank task matrices, e.g. LoRA updates), the singular vectors of its zero
singular values are arbitrary; the authors' code gives them `sigma_bar` too, which makes the result depend
on the SVD routine. Here `sigma_bar` stays the mean over all singular values (zeros included, as the paper)
but only the components with nonzero singular values carry it; for a full-rank sum nothing changes.

Default `scale` 1.0: the paper selects alpha on validation data (the authors' script sweeps (0, 3]); 1.0 is
the default of the FusionBench implementation; `select=validation` with a `select_grid.iso_c.scale` grid
reproduces the search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.methods.base import MergeMethod, TensorContext
from mergelab.methods.options import check_real
from mergelab.methods.spectral import numerical_rank


def isotropic_merge(task_matrices: Sequence[Tensor]) -> Tensor:
    """`sigma_bar U V^T` of the summed task matrices' thin SVD."""
    total = torch.stack(list(task_matrices)).sum(dim=0)
    left, singular, right_t = torch.linalg.svd(total, full_matrices=False)
    rank = numerical_rank(singular, total.shape)
    return (left[:, :rank] * singular.mean()) @ right_t[:rank]


@dataclass(frozen=True)
class IsoCParams:
    scale: float = 1.0


class IsoC(MergeMethod):
    """Iso-C: whole 2-D tensors, one SVD of the summed task matrices."""

    name = "iso_c"
    Params = IsoCParams

    def validate(self) -> None:
        check_real(self.name, "scale", self.params.scale)

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        task_vectors = [expert - base for expert in experts]
        if base.dim() == 2:
            merged = isotropic_merge(task_vectors)
        else:
            merged = torch.stack(task_vectors).mean(dim=0)
        return base + self.params.scale * merged
