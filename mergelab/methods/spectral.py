"""Singular-value helpers shared by the methods that merge 2-D task matrices in their SVD bases (tsv, iso_c)."""

from __future__ import annotations

import torch
from torch import Tensor


def numerical_rank(singular_values: Tensor, shape: torch.Size) -> int:
    """How many of the (descending) singular values of a matrix of `shape` are not zero to rounding.

    The tolerance is `max(shape) * eps * largest`, as `numpy.linalg.matrix_rank`. Singular vectors of zero
    singular values are arbitrary (they depend on the LAPACK/cuSOLVER build), so methods drop them to keep
    results independent of the device.
    """
    if singular_values.numel() == 0:
        return 0
    tolerance = float(singular_values[0]) * max(shape) * torch.finfo(singular_values.dtype).eps
    return int((singular_values > tolerance).sum())


def polar_factor(matrix: Tensor) -> Tensor:
    """The matrix with orthonormal columns (or rows, for a wide matrix) nearest to `matrix` in Frobenius
    norm (orthogonal Procrustes): `P Q^T` from the thin SVD `P S Q^T`."""
    left, _, right_t = torch.linalg.svd(matrix, full_matrices=False)
    return left @ right_t
