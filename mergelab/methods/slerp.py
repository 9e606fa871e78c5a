"""SLERP: spherical linear interpolation between two models, tensor by tensor (Shoemake, 1985; mergekit).

Each tensor of expert 0 and expert 1 is flattened; with `cos(theta)` the cosine between the two vectors,
the result is `sin((1 - t) theta) / sin(theta) * theta_0 + sin(t theta) / sin(theta) * theta_1`, so `t = 0`
gives expert 0 and `t = 1` expert 1. When the vectors are near-parallel (`|cos(theta)| > 0.9995`, mergekit's
DOT_THRESHOLD) the formula is ill-conditioned and linear interpolation `(1 - t) theta_0 + t theta_1` is used.
A vector with norm below 1e-8 is not normalized (as mergekit), so its cosine is 0 and theta is pi/2.

Use of the base (following mergekit): mergekit's `slerp` takes exactly two models, one of them its
`base_model`, which is the `t = 0` end; it interpolates raw weights, not task vectors, so there is no third
model. Here the two models are the two experts and mergekit's `base_model` is expert 0; the base checkpoint
is not used in the math (it still supplies the tensor layout and the non-float tensors, as for every
method). Any other number of experts is an error. mergekit's per-layer list of `t` values belongs to the
YAML reader; here `t` is one float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext
from mergelab.methods.options import check_real

DOT_THRESHOLD = 0.9995  # |cos| above this: linear interpolation (mergekit's value)
NORM_EPS = 1e-8  # norms at or below this are not divided by (mergekit's value)


def slerp(t: float, start: Tensor, end: Tensor) -> Tensor:
    """Spherical interpolation from `start` (t = 0) to `end` (t = 1) over the flattened tensors."""
    norms = [float(vector.norm()) for vector in (start, end)]
    divisor = math.prod(norm if norm > NORM_EPS else 1.0 for norm in norms)
    cosine = float(start.flatten() @ end.flatten()) / divisor
    if abs(cosine) > DOT_THRESHOLD:
        return start * (1.0 - t) + end * t
    theta = math.acos(cosine)
    start_share = math.sin((1.0 - t) * theta) / math.sin(theta)
    return start * start_share + end * (math.sin(t * theta) / math.sin(theta))


@dataclass(frozen=True)
class SlerpParams:
    t: float = 0.5


class Slerp(MergeMethod):
    """SLERP between expert 0 (`t = 0`) and expert 1 (`t = 1`); the default `t = 0.5` is the midpoint."""

    name = "slerp"
    Params = SlerpParams
    uses_base = False

    def validate(self) -> None:
        check_real(self.name, "t", self.params.t, 0.0, 1.0)

    def expert_weights(self, n_experts: int) -> list[float]:
        if n_experts != 2:
            raise MergeConfigError(f"method '{self.name}' interpolates exactly 2 experts, got {n_experts}")
        return super().expert_weights(n_experts)

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        self.expert_weights(len(experts))
        return slerp(float(self.params.t), experts[0], experts[1])
