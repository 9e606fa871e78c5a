"""Partial merging: per block, average the best-matched MLP units and keep the rest of every expert's.

With E aligned experts and a block MLP of n units, the `m` units whose matches correlate best (mean over the
experts' matches with the reference) are averaged; the other `n - m` units of every expert are kept side by
side, so the MLP has `m + E (n - m)` units: `n (1 + (E - 1) r)` with `r = (n - m) / n`, i.e. `n (1 + r)` for
two experts. `down_proj` columns of kept units are divided by E, so the merged MLP's output is the experts'
average wherever units are kept (two identical experts merge to the same function at any budget).

`budget` is the MLP width relative to one expert's: a number for every block, or one number per block
(1.0 = fully merged, E = nothing merged). Blocks narrower than the widest are padded with zero units (zero
gate/up rows and down columns, which contribute nothing), because a Llama config has one intermediate size.
Attention heads, norms and embeddings are always fully merged (averaged after alignment).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergelab.pleas.activations import LlamaShape

MLP_ROWS = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
MLP_COLUMNS = "mlp.down_proj.weight"


@dataclass(frozen=True)
class MlpLayout:
    """Which reference MLP units one merged block averages and which it keeps from every expert."""

    merged: Tensor  # reference unit indices averaged across experts, ascending
    separate: Tensor  # reference unit indices kept from each expert, ascending
    n_experts: int
    width: int  # merged MLP width including zero padding

    @property
    def padding(self) -> int:
        return self.width - len(self.merged) - self.n_experts * len(self.separate)

    def arrange(self, per_expert: Sequence[Tensor], dim: int, separate_scale: float = 1.0) -> Tensor:
        """Merged-layout tensor from per-expert tensors in reference unit order along `dim`.

        Averaged units first, then each expert's kept units (times `separate_scale`), then zero padding.
        """
        merged, separate = self.merged.to(per_expert[0].device), self.separate.to(per_expert[0].device)
        parts = [torch.stack([tensor.index_select(dim, merged) for tensor in per_expert]).mean(0)]
        parts += [tensor.index_select(dim, separate) * separate_scale for tensor in per_expert]
        shape = list(per_expert[0].shape)
        shape[dim] = self.padding
        parts.append(per_expert[0].new_zeros(shape))
        return torch.cat(parts, dim)


def merged_unit_counts(budget: float | Sequence[float], shape: LlamaShape, n_experts: int) -> list[int]:
    """Per block, how many MLP units are averaged for a width `budget` (see the module docstring)."""
    widths = (
        [float(budget)] * shape.layers if isinstance(budget, (int, float)) else [float(b) for b in budget]
    )
    if len(widths) != shape.layers:
        raise ValueError(f"pleas: budget has {len(widths)} per-block widths for {shape.layers} blocks")
    for width in widths:
        if not 1.0 <= width <= max(n_experts, 1):
            raise ValueError(
                f"pleas: budget {width} is outside [1, {n_experts}] (1 = fully merged, "
                f"{n_experts} = every unit of the {n_experts} experts kept)"
            )
    n = shape.intermediate
    kept_fractions = [(width - 1) / (n_experts - 1) if n_experts > 1 else 0.0 for width in widths]
    return [n - round(fraction * n) for fraction in kept_fractions]


def mlp_layouts(qualities: Sequence[Tensor], merged_counts: Sequence[int], n_experts: int) -> list[MlpLayout]:
    """Per block: average the `merged_counts[l]` best-matched units (by `qualities[l]`, ties by index)."""
    splits = []
    for quality, count in zip(qualities, merged_counts):
        order = torch.sort(quality, descending=True, stable=True).indices
        splits.append((order[:count].sort().values, order[count:].sort().values))
    width = max(len(merged) + n_experts * len(separate) for merged, separate in splits)
    return [MlpLayout(merged, separate, n_experts, width) for merged, separate in splits]


def partial_merge(states: Sequence[Mapping[str, Tensor]], layouts: Sequence[MlpLayout]) -> dict[str, Tensor]:
    """The merged state dict of aligned experts: MLPs per `layouts`, every other tensor averaged."""
    merged = {}
    for name in states[0]:
        values = [state[name].float() for state in states]
        parts = name.split(".")
        module = ".".join(parts[3:])
        if parts[:2] == ["model", "layers"] and (module in MLP_ROWS or module == MLP_COLUMNS):
            layout = layouts[int(parts[2])]
            if module == MLP_COLUMNS:
                merged[name] = layout.arrange(values, 1, separate_scale=1.0 / len(states))
            else:
                merged[name] = layout.arrange(values, 0)
        else:
            merged[name] = torch.stack(values).mean(0)
    return merged


def widened_config(config, state_dict: Mapping[str, Tensor]):
    """A copy of a Llama `config` whose intermediate size fits the state dict's MLP, or None if it already does.

    A PLeaS merge with budget > 1 has wider MLPs than its experts; this is how such a state dict is loaded.
    """
    gate = state_dict.get("model.layers.0.mlp.gate_proj.weight")
    if gate is None or getattr(config, "intermediate_size", None) in (None, gate.shape[0]):
        return None
    widened = copy.deepcopy(config)
    widened.intermediate_size = int(gate.shape[0])
    return widened
