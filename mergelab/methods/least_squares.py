"""The least-squares step shared by RegMean and PLeaS: the linear map that best reproduces given outputs.

For a linear layer `y = x @ W.T`, the weight minimizing `sum ||x W.T - y||^2 + ridge * ||W||^2` over inputs
with Gram matrix `gram = sum x.T x` and cross term `cross = sum x.T y` solves `(gram + ridge I) W.T = cross`.
RegMean is the case `gram = sum_i G_i`, `cross = sum_i G_i W_i.T`; PLeaS fits merged layers with it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def solve_least_squares(gram: Tensor, cross: Tensor, ridge: float = 0.0) -> Tensor:
    """The weight `W` (outputs x inputs) with `(gram + ridge * I) @ W.T = cross`, solved in float64.

    `gram` is (inputs x inputs), symmetric positive semi-definite; `cross` is (inputs x outputs). A ridge
    of 0 needs `gram` to be invertible; the error then names the fix.
    """
    if (
        gram.dim() != 2
        or gram.shape[0] != gram.shape[1]
        or cross.dim() != 2
        or cross.shape[0] != gram.shape[0]
    ):
        raise ValueError(f"least squares: gram {tuple(gram.shape)} and cross {tuple(cross.shape)} do not fit")
    if ridge < 0:
        raise ValueError(f"least squares: ridge={ridge} must be >= 0")
    system = gram.to(torch.float64)
    if ridge:
        system = system + ridge * torch.eye(system.shape[0], dtype=system.dtype, device=system.device)
    solution, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        weight_t = torch.cholesky_solve(cross.to(torch.float64), solution)
    else:
        try:
            weight_t = torch.linalg.solve(system, cross.to(torch.float64))
        except RuntimeError as error:
            raise ValueError(f"least squares: the Gram matrix is singular; use ridge > 0 ({error})") from None
    return weight_t.T.to(cross.dtype).contiguous()
