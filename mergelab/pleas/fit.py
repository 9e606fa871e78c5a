"""The least-squares step of PLeaS: refit every linear layer of the merged model, from input to output.

For each block and each group of linear layers reading one input (q/k/v, o, gate/up, down), the merged
model is run on the calibration batches to get the group's inputs X (which already reflect the refitted
layers before it), and every aligned expert is run to get its own outputs on its own inputs. The target Y
is the experts' average for averaged units and each expert's own output for the MLP units kept from it
(the layout of `partial.MlpLayout`). The merged weight minimizes `||X W.T - Y||^2 / N + ridge ||W||^2`:

- `least_squares` (default): in closed form through `methods.least_squares.solve_least_squares`, with
  `ridge` relative to the mean diagonal of the input Gram matrix `X.T X / N`;
- `adam`: Adam from the aligned average, 400 steps, learning rate 5e-4 with cosine decay (the reference
  code's optimizer, schedule and step count) on the same full-batch objective, whose gradient
  `2 (W G - C.T) / (N out)` needs only the Gram matrix G and cross term C;
- `none`: keep the aligned (partial) average.

The function-space error reported per layer is `||X W.T - Y||^2 / ||Y||^2` over the calibration tokens,
computed from the same sums.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mergelab.methods.least_squares import solve_least_squares
from mergelab.pleas.activations import LINEAR_GROUPS, MLP_INPUTS, LlamaShape, block, capture
from mergelab.pleas.calibration import Batch
from mergelab.pleas.partial import MlpLayout

FITS = ("least_squares", "adam", "none")  # closed form, the reference's Adam, or none (aligned average)
ADAM_STEPS = 400
ADAM_LEARNING_RATE = 5e-4


class LeastSquaresStats:
    """Sums over tokens of `x.T x`, `x.T y` and `||y||^2` for one linear layer's input x and target y."""

    def __init__(self) -> None:
        self.count = 0
        self.gram: Tensor | None = None
        self.cross: Tensor | None = None
        self.target_energy = 0.0

    def update(self, inputs: Tensor, targets: Tensor) -> None:
        inputs, targets = inputs.double(), targets.double()
        gram, cross = inputs.T @ inputs, inputs.T @ targets
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.target_energy += float((targets * targets).sum())
        self.count += inputs.shape[0]

    def error(self, weight: Tensor) -> float:
        """`||X W.T - Y||^2 / ||Y||^2` (0 when the targets are all zero and the fit exact)."""
        weight = weight.double().to(self.gram.device)
        residual = (
            (weight @ self.gram * weight).sum() - 2 * (weight.T * self.cross).sum() + self.target_energy
        )
        return max(float(residual), 0.0) / max(self.target_energy, 1e-30)

    def closed_form(self, ridge: float) -> Tensor:
        gram = self.gram / self.count
        scale = float(gram.diagonal().mean()) if ridge else 0.0
        return solve_least_squares(gram, self.cross / self.count, ridge * scale)

    def adam(
        self, start: Tensor, steps: int = ADAM_STEPS, learning_rate: float = ADAM_LEARNING_RATE
    ) -> Tensor:
        """Adam on the mean squared error from `start`, with full-batch gradients from the sums."""
        weight = nn.Parameter(start.detach().double().clone())
        gram, cross = self.gram / self.count, self.cross / self.count
        optimizer = torch.optim.Adam([weight], lr=learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(steps):
            weight.grad = 2 * (weight.detach() @ gram - cross.T) / weight.shape[0]
            optimizer.step()
            schedule.step()
        return weight.detach()


@dataclass(frozen=True)
class LayerFit:
    """Function-space errors of one refitted group of linear layers (see the module docstring)."""

    layer: int
    group: str
    average_error: float
    fitted_error: float
    adam_error: float = math.nan  # filled only when asked to compare
    solve_seconds: float = 0.0  # computing the chosen weight from the sums (closed form or Adam)
    adam_seconds: float = math.nan  # the Adam run, when asked to compare


def _targets(outputs: Sequence[Tensor], module: str, layout: MlpLayout) -> Tensor:
    if module in MLP_INPUTS:
        return layout.arrange(outputs, 1)
    return torch.stack(list(outputs)).mean(0)


def fit_group(
    merged: nn.Module,
    experts: Sequence[nn.Module],
    batches: Sequence[Batch],
    layer: int,
    group: Sequence[str],
    layout: MlpLayout,
) -> LeastSquaresStats:
    """The least-squares sums of one group: merged-model inputs against the experts' arranged outputs."""
    stats = LeastSquaresStats()
    for batch in batches:
        inputs = capture(merged, batch, {"input": block(merged, layer).get_submodule(group[0])})["input"]
        per_expert = [
            capture(expert, batch, {}, {name: block(expert, layer).get_submodule(name) for name in group})
            for expert in experts
        ]
        targets = [_targets([outputs[name] for outputs in per_expert], name, layout) for name in group]
        stats.update(inputs, torch.cat(targets, 1))
    return stats


@torch.no_grad()
def fit_merged_model(
    merged: nn.Module,
    experts: Sequence[nn.Module],
    layouts: Sequence[MlpLayout],
    batches: Sequence[Batch],
    shape: LlamaShape,
    *,
    fit: str = "least_squares",
    ridge: float = 1e-4,
    compare_adam: bool = False,
    progress: bool = False,
) -> list[LayerFit]:
    """Refit the merged model's linear layers in place, block by block; returns the per-group errors."""
    if fit not in FITS:
        raise ValueError(f"pleas: fit={fit!r} is not allowed; allowed: {', '.join(FITS)}")
    report: list[LayerFit] = []
    steps = [(layer, group) for layer in range(shape.layers) for group in LINEAR_GROUPS]
    for layer, group in tqdm(steps, desc="pleas fit", disable=not progress, leave=False):
        modules = [block(merged, layer).get_submodule(name) for name in group]
        stats = fit_group(merged, experts, batches, layer, group, layouts[layer])
        start = torch.cat([module.weight for module in modules]).double()
        started = time.perf_counter()
        with torch.enable_grad():
            adam = stats.adam(start) if fit == "adam" or compare_adam else None
        adam_seconds = time.perf_counter() - started
        started = time.perf_counter()
        if fit == "least_squares":
            weight = stats.closed_form(ridge)
        else:
            weight = adam if fit == "adam" else start
        solve_seconds = adam_seconds if fit == "adam" else time.perf_counter() - started
        report.append(
            LayerFit(
                layer=layer,
                group="+".join(name.split(".")[-1] for name in group),
                average_error=stats.error(start),
                fitted_error=stats.error(weight),
                adam_error=stats.error(adam) if compare_adam else math.nan,
                solve_seconds=solve_seconds,
                adam_seconds=adam_seconds if compare_adam else math.nan,
            )
        )
        offset = 0
        for module in modules:
            rows = module.weight.shape[0]
            module.weight.copy_(weight[offset : offset + rows].to(module.weight))
            offset += rows
    return report
