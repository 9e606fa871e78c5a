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


def paper_slerp(t, start, end, dot_threshold=0.9995, eps=1e-8):
    """Shoemake's slerp of the flattened tensors in float64 (mergekit's near-parallel lerp fallback)."""
    a, b = start.double().flatten(), end.double().flatten()
    unit_a = a / a.norm() if a.norm() > eps else a
    unit_b = b / b.norm() if b.norm() > eps else b
    cosine = torch.dot(unit_a, unit_b)
    if cosine.abs() > dot_threshold:
        result = torch.lerp(a, b, t)
    else:
        theta = torch.acos(cosine)
        result = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return result.view(start.shape).float()


def breadcrumbs_sparse(task_vector, density, gamma):
    """Zero all but ranks [top, top + keep) of |task_vector| (stable descending sort: ties by position)."""
    flat = task_vector.flatten()
    n = flat.numel()
    keep = int(density * n)
    top = min(int(gamma * n), n - keep)
    order = torch.sort(-flat.abs(), stable=True).indices
    sparse = torch.zeros_like(flat)
    sparse[order[top : top + keep]] = flat[order[top : top + keep]]
    return sparse.view(task_vector.shape)


def paper_breadcrumbs(base, experts, density, gamma, scale=1.0):
    """Model Breadcrumbs with task arithmetic: base + scale * sum of the masked task vectors."""
    return base + scale * sum(breadcrumbs_sparse(expert - base, density, gamma) for expert in experts)


def magprune_keep_probabilities(task_vector, density, epsilon):
    """Keep probability per entry from its magnitude rank within its row, by explicit Python ranking."""
    rows = (
        task_vector.reshape(1, -1)
        if task_vector.dim() <= 1
        else task_vector.reshape(task_vector.shape[0], -1)
    )
    probabilities = torch.empty_like(rows)
    width = rows.shape[1]
    for r, row in enumerate(rows.tolist()):
        ranked = sorted(range(width), key=lambda index: (abs(row[index]), index))
        for rank, index in enumerate(ranked):
            step = 2 * epsilon * rank / (width - 1) if width > 1 else epsilon
            probabilities[r, index] = density - epsilon + step
    return probabilities.view(task_vector.shape)


def paper_della(base, experts, density, epsilon, scale, uniforms):
    """DELLA: keep entry i with probability p_i (rank-based) when its uniform draw is below it, rescale by
    1 / p_i, then TIES election and disjoint mean over the sparse task vectors (no trimming)."""
    sparse = []
    for expert, uniform in zip(experts, uniforms):
        task_vector = expert - base
        keep = magprune_keep_probabilities(task_vector, density, epsilon)
        sparse.append(torch.where(uniform < keep, task_vector / keep, torch.zeros_like(task_vector)))
    flat = paper_ties(base.flatten(), [base.flatten() + vector.flatten() for vector in sparse], 1.0)
    return base + scale * (flat.view(base.shape) - base)


def paper_model_stock(base, experts):
    """Model Stock with the mean pairwise cosine of the task vectors, clamped to [0, 1]."""
    vectors = [(expert - base).flatten() for expert in experts]
    n = len(vectors)
    cosines = [
        torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0)
        for i in range(n)
        for j in range(i + 1, n)
    ]
    cosine = torch.stack(cosines).mean().clamp(0, 1)
    ratio = n * cosine / (1 + (n - 1) * cosine)
    return ratio * torch.stack(experts).mean(0) + (1 - ratio) * base


def paper_tsv(base, experts, scale=1.0):
    """TSV-Merge after the authors' first implementation: zero-padded U, S, V blocks, Procrustes by SVD."""
    task_vectors = [expert - base for expert in experts]
    if base.dim() != 2:
        return base + scale * torch.stack(task_vectors).mean(0)
    n = len(task_vectors)
    rank = min(base.shape)
    k = rank // n
    sum_u = torch.zeros(base.shape[0], rank, dtype=torch.float64)
    sum_s = torch.zeros(rank, dtype=torch.float64)
    sum_v = torch.zeros(rank, base.shape[1], dtype=torch.float64)
    for i, task_vector in enumerate(task_vectors):
        u, s, v = torch.linalg.svd(task_vector.double(), full_matrices=False)
        sum_u[:, i * k : (i + 1) * k] = u[:, :k]
        sum_s[i * k : (i + 1) * k] = s[:k]
        sum_v[i * k : (i + 1) * k] = v[:k]
    u_u, _, v_u = torch.linalg.svd(sum_u, full_matrices=False)
    u_v, _, v_v = torch.linalg.svd(sum_v, full_matrices=False)
    merged = (u_u @ v_u) @ torch.diag(sum_s) @ (u_v @ v_v)
    return base + scale * merged.float()


def paper_iso_c(base, experts, scale=1.0):
    """Iso-C: the summed task matrix's singular values all replaced by their mean (float64 SVD)."""
    task_vectors = [expert - base for expert in experts]
    if base.dim() != 2:
        return base + scale * torch.stack(task_vectors).mean(0)
    u, s, v = torch.linalg.svd(torch.stack(task_vectors).sum(0).double(), full_matrices=False)
    return base + scale * (s.mean() * u @ v).float()
