"""PLeaS (Nasery et al.): permutations + partial merging + layer-wise least squares, for experts that need
not share a base. A whole-model method: the engine's tensor-by-tensor pass does not apply, so `merge_models`
hands the experts' directories to `mergelab.pleas` (see that package for the algorithm and its choices).

Defaults: `budget` 1.0 (fully merged, the reference code's default `budget_ratio`), `n_examples` 1600 (the
reference matches activations on 100 batches of 16), `ridge` 1e-4 relative to the mean input Gram diagonal
(ours: the reference fits with Adam and has no ridge), `fit` least_squares (closed form; `adam` is the
reference's 400-step optimizer on the same objective; `none` keeps the aligned average, i.e. Git Re-Basin
with partial merging).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mergelab.methods.base import MergeConfigError, MergeMethod, TensorContext
from mergelab.pleas.fit import FITS


@dataclass(frozen=True)
class PleasParams:
    budget: float | tuple[float, ...] = 1.0
    n_examples: int = 1600
    ridge: float = 1e-4
    fit: str = "least_squares"


class Pleas(MergeMethod):
    """Align experts' units to the first expert's, merge within a width budget, refit each linear layer."""

    name = "pleas"
    Params = PleasParams
    uses_base = False
    whole_model = True

    def validate(self) -> None:
        budget = self.params.budget
        widths = [budget] if isinstance(budget, (int, float)) else list(budget)
        if not widths or any(w < 1 for w in widths):
            shown = budget if isinstance(budget, (int, float)) else widths  # as the user wrote it: a list
            raise MergeConfigError(
                f"method 'pleas': budget={shown!r} must be a width >= 1 (1 = fully merged) or one per block"
            )
        if self.params.n_examples < 1:
            raise MergeConfigError(f"method 'pleas': n_examples={self.params.n_examples!r} must be >= 1")
        if self.params.ridge < 0:
            raise MergeConfigError(f"method 'pleas': ridge={self.params.ridge} must be >= 0")
        if self.params.fit not in FITS:
            raise MergeConfigError(f"method 'pleas': fit={self.params.fit!r} is not one of {', '.join(FITS)}")

    def merge(self, base: Tensor, experts: Sequence[Tensor], context: TensorContext) -> Tensor:
        raise MergeConfigError("method 'pleas' merges whole models; call mergelab.merge or mergelab run")

    def merge_models(
        self,
        base_dir: Path,
        expert_dirs: Sequence[Path],
        data: Sequence[str] | None,
        device: torch.device,
        progress: bool,
    ) -> nn.Module:
        """The merged model (its config may be wider than the experts'); `data`: one spec per expert."""
        from mergelab.pleas.merge import PleasOptions, pleas_merge_directories

        options = PleasOptions(
            budget=self.params.budget,
            n_examples=self.params.n_examples,
            ridge=self.params.ridge,
            fit=self.params.fit,
        )
        model, _ = pleas_merge_directories(base_dir, expert_dirs, data, options, device, progress=progress)
        return model
