"""Permutations that align one expert's hidden units with a reference expert's (Git Re-Basin by activations).

For every permutable axis the Pearson correlation between the reference's units and the other model's units
is accumulated over the calibration tokens, and `scipy.optimize.linear_sum_assignment` picks the permutation
with the largest total correlation. The axes of a Llama causal LM:

- the residual stream (one permutation for the whole model, matched on the summed correlations of the
  residual state entering every block and the final norm): embeddings, RMSNorm weights, and the input
  columns / output rows of every linear layer that reads / writes it. RMSNorm is equivariant to it, so the
  permuted model computes exactly the same function;
- per block, the attention heads, moved as key/value groups (a key/value head with the query heads that
  share it) matched on the summed correlation of their output dimensions; dimensions inside a head are not
  permuted (rotary embeddings pair them);
- per block, the MLP's intermediate units (rows of gate/up, columns of down), matched on the input of
  `down_proj`.

The reference code (SewoongLab/PLeaS-Merging) uses negative Euclidean distance between activations as the
similarity by default; we use correlation (as Git Re-Basin's and ZipIt's activation matching), which does
not depend on the units' scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from tqdm.auto import tqdm

from mergelab.pleas.activations import LlamaShape, matching_modules, paired_activations
from mergelab.pleas.calibration import Batch


class CrossCorrelation:
    """Running sums for the correlation matrix between a reference's units and another model's units."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: list[Tensor] = []

    def update(self, reference: Tensor, other: Tensor) -> None:
        """Add tokens: `reference` (tokens x n) and `other` (tokens x m) hold the same tokens' activations."""
        reference, other = reference.double(), other.double()
        terms = [
            reference.sum(0),
            other.sum(0),
            (reference * reference).sum(0),
            (other * other).sum(0),
            reference.T @ other,
        ]
        self.sums = terms if not self.sums else [total + term for total, term in zip(self.sums, terms)]
        self.count += reference.shape[0]

    def matrix(self) -> Tensor:
        """(n x m) Pearson correlations; a unit that never varies correlates 0 with everything."""
        if self.count < 2:
            raise ValueError("pleas: matching needs at least two calibration tokens")
        sum_a, sum_b, square_a, square_b, cross = self.sums
        mean_a, mean_b = sum_a / self.count, sum_b / self.count
        covariance = cross / self.count - mean_a[:, None] * mean_b[None, :]
        std_a = (square_a / self.count - mean_a**2).clamp_min(0).sqrt()
        std_b = (square_b / self.count - mean_b**2).clamp_min(0).sqrt()
        return covariance / (std_a[:, None] * std_b[None, :]).clamp_min(1e-12)


def assign(similarity: Tensor) -> Tensor:
    """The permutation `p` maximizing `sum_j similarity[j, p[j]]`: reference unit j is matched to p[j]."""
    rows, columns = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    return torch.as_tensor(columns, dtype=torch.long)[torch.as_tensor(rows).argsort()]


def group_similarity(correlation: Tensor, shape: LlamaShape) -> Tensor:
    """(kv groups x kv groups) similarity of attention head groups: summed correlations of same-position dims.

    `correlation` is over the `o_proj` inputs (heads x head_dim, query heads in order); a group's j-th
    query head dimension d is compared with the other group's j-th query head dimension d.
    """
    width = shape.heads_per_group * shape.head_dim
    blocks = correlation.reshape(shape.kv_heads, width, shape.kv_heads, width)
    return torch.diagonal(blocks, dim1=1, dim2=3).sum(-1)


@dataclass(frozen=True)
class Alignment:
    """Permutations taking the other model's units to the reference's order (index j: the unit matched to j)."""

    residual: Tensor
    groups: list[Tensor]
    mlp: list[Tensor]
    mlp_quality: list[Tensor]  # correlation of each reference MLP unit with its match
    residual_quality: Tensor  # per reference residual dimension, its match's correlation (mean over depths)

    @classmethod
    def identity(cls, shape: LlamaShape) -> Alignment:
        return cls(
            residual=torch.arange(shape.hidden),
            groups=[torch.arange(shape.kv_heads) for _ in range(shape.layers)],
            mlp=[torch.arange(shape.intermediate) for _ in range(shape.layers)],
            mlp_quality=[torch.ones(shape.intermediate) for _ in range(shape.layers)],
            residual_quality=torch.ones(shape.hidden),
        )


def align(
    reference: nn.Module,
    other: nn.Module,
    batches: Sequence[Batch],
    shape: LlamaShape,
    progress: bool = False,
) -> Alignment:
    """Match `other`'s residual dimensions, head groups and MLP units to `reference`'s on the batches."""
    correlations: dict[str, CrossCorrelation] = {}
    pairs = paired_activations([reference, other], batches, lambda model: matching_modules(model, shape))
    for ours, theirs in tqdm(
        pairs, total=len(batches), desc="pleas match", disable=not progress, leave=False
    ):
        for key, activation in ours.items():
            correlations.setdefault(key, CrossCorrelation()).update(activation, theirs[key])
    residual = sum(correlations[f"residual.{layer}"].matrix() for layer in range(shape.layers + 1)).cpu()
    residual_order = assign(residual)
    mlp_correlations = [correlations[f"mlp.{layer}"].matrix() for layer in range(shape.layers)]
    mlp = [assign(matrix) for matrix in mlp_correlations]
    return Alignment(
        residual=residual_order,
        groups=[
            assign(group_similarity(correlations[f"heads.{layer}"].matrix(), shape))
            for layer in range(shape.layers)
        ],
        mlp=mlp,
        mlp_quality=[
            matrix.cpu()[torch.arange(len(order)), order].float()
            for matrix, order in zip(mlp_correlations, mlp)
        ],
        residual_quality=residual[torch.arange(shape.hidden), residual_order].float() / (shape.layers + 1),
    )


def _expand(groups: Tensor, width: int) -> Tensor:
    """Row indices moving whole blocks of `width` rows: block j takes the rows of block `groups[j]`."""
    return (groups[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


def permute_state_dict(
    state: dict[str, Tensor], alignment: Alignment, shape: LlamaShape
) -> dict[str, Tensor]:
    """The state dict of the permuted model (same function, units in the reference's order)."""
    residual = alignment.residual
    query_rows = [_expand(groups, shape.heads_per_group * shape.head_dim) for groups in alignment.groups]
    kv_rows = [_expand(groups, shape.head_dim) for groups in alignment.groups]
    permuted = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            result = tensor[:, residual]
        elif name == "model.norm.weight" or name.endswith("layernorm.weight"):
            result = tensor[residual]
        elif parts[:2] == ["model", "layers"] and parts[-1] == "weight":
            layer, module = int(parts[2]), ".".join(parts[3:-1])
            result = _permute_linear(
                tensor, module, residual, query_rows[layer], kv_rows[layer], alignment.mlp[layer]
            )
        else:
            raise ValueError(f"pleas: do not know how to permute the tensor {name} {tuple(tensor.shape)}")
        permuted[name] = result.contiguous()
    return permuted


def _permute_linear(
    weight: Tensor, module: str, residual: Tensor, query_rows: Tensor, kv_rows: Tensor, mlp: Tensor
) -> Tensor:
    if module == "self_attn.q_proj":
        return weight[query_rows][:, residual]
    if module in ("self_attn.k_proj", "self_attn.v_proj"):
        return weight[kv_rows][:, residual]
    if module == "self_attn.o_proj":
        return weight[residual][:, query_rows]
    if module in ("mlp.gate_proj", "mlp.up_proj"):
        return weight[mlp][:, residual]
    if module == "mlp.down_proj":
        return weight[residual][:, mlp]
    raise ValueError(f"pleas: do not know how to permute the linear layer {module}")
