"""Independent re-implementations of the papers' formulas, used as test oracles."""

from __future__ import annotations

import torch


def exact_trim(task_vectors: torch.Tensor, density: float) -> torch.Tensor:
    """Keep exactly int(density * n) entries per row by magnitude; ties go to the lowest index."""
    trimmed = torch.zeros_like(task_vectors)
    count = int(density * task_vectors.shape[1])
    for row, vector in enumerate(task_vectors):
        kept = torch.sort(-vector.abs(), stable=True).indices[:count]
        trimmed[row, kept] = vector[kept]
    return trimmed


def paper_ties(base, experts, density, scale=1.0, majority_sign=None, sign="sum"):
    """TIES over one flattened vector, after the authors' code (sign of sum, zeros to majority, disjoint mean)."""
    trimmed = exact_trim(torch.stack([expert - base for expert in experts]), density)
    votes = trimmed.sum(0) if sign == "sum" else trimmed.sign().sum(0)
    elected = torch.sign(votes)
    majority = torch.sign(elected.sum()) if majority_sign is None else torch.tensor(majority_sign)
    elected[elected == 0] = majority if majority != 0 else 1.0
    keep = torch.where(elected > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * keep
    merged = selected.sum(0) / (selected != 0).sum(0).clamp(min=1)
    return base + scale * merged


def paper_ties_state_dicts(
    base: dict, experts: list[dict], density: float, scale: float = 1.0, sign: str = "sum"
):
    """Global TIES on whole state dicts: every float tensor flattened into one vector, in sorted-name order."""
    names = sorted(name for name, tensor in base.items() if tensor.is_floating_point())
    flat_base = torch.cat([base[name].float().flatten() for name in names])
    flat_experts = [torch.cat([expert[name].float().flatten() for name in names]) for expert in experts]
    merged = paper_ties(flat_base, flat_experts, density, scale, sign=sign)
    result, offset = {}, 0
    for name in names:
        size = base[name].numel()
        result[name] = merged[offset : offset + size].view(base[name].shape).to(base[name].dtype)
        offset += size
    return result
