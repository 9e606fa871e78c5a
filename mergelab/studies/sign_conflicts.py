"""Sign conflicts among experts' task vectors as their number grows (the TIES-Merging paper's figure).

A parameter has a sign conflict among a set of experts when at least one of their task vectors
(`theta_i - theta_base`) is positive there and at least one is negative; zeros take no side. The fraction
is taken over every float parameter of the model, on the untrimmed task vectors and on task vectors
trimmed to their top `density` by magnitude over the whole model (exactly as TIES with `trim_scope:
global` trims them). For each number of experts every subset of that size is measured, so the table
gives the mean and the range over subsets.

Null baseline: if every nonzero task-vector entry had an independent fair-coin sign, n experts that are
all nonzero at a parameter would conflict there with probability 1 - 2^(1-n) (50 / 87.5 / 99.2% for 2 / 4
/ 8); with the experts' actual masks (after trimming most parameters have fewer than n nonzero experts)
the expected share is the mean over parameters of 1 - 2^(1-k), k = the number of nonzero experts there.
Observed shares only say something about the experts when they differ from this baseline.

The checkpoints are read tensor by tensor through the engine's reader: each tensor adds to a histogram of
(which experts are positive, which are negative) bit patterns, from which any subset's conflict count
follows without a second pass. The histogram has 4^n bins, so at most `MAX_EXPERTS` experts are measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mergelab.engine.checkpoint import CheckpointError, check_compatible, is_float, open_checkpoint
from mergelab.methods import get_method
from mergelab.methods.trim import keep_mask

MAX_EXPERTS = 10
CheckpointRef = str | Path | Mapping[str, Tensor]


def sign_pattern_histogram(
    base: CheckpointRef, experts: Sequence[CheckpointRef], density: float | None, progress: bool = False
) -> Tensor:
    """Counts of (positive experts, negative experts) bit patterns over every float parameter.

    Bin `positive * 2**n + negative`, where bit i of `positive` (`negative`) is set when expert i's task
    vector is positive (negative) at that parameter. `density` None: untrimmed task vectors; else each is
    trimmed to exactly `int(density * n)` entries over the whole model, as TIES's global trimming.
    """
    from mergelab.engine.global_trim import global_trim_contexts
    from mergelab.engine.stream import TensorStream

    n_experts = len(experts)
    if not 2 <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"experts: {n_experts} given; sign conflicts are measured for 2..{MAX_EXPERTS}")
    base_checkpoint = open_checkpoint(base, "base")
    expert_checkpoints = [open_checkpoint(expert, f"expert {index}") for index, expert in enumerate(experts)]
    try:
        infos = check_compatible(base_checkpoint, expert_checkpoints)
        names = sorted(name for name, info in infos.items() if is_float(info.dtype))
        stream = TensorStream(base_checkpoint, expert_checkpoints, torch.device("cpu"))
        contexts = (
            global_trim_contexts(stream, names, get_method("ties", density=density), progress)
            if density is not None
            else {}
        )
        bits = (1 << torch.arange(n_experts, dtype=torch.int64)).view(-1, 1)
        histogram = torch.zeros(4**n_experts, dtype=torch.int64)
        label = "signs: untrimmed" if density is None else f"signs: top {density:g}"
        with tqdm(total=len(names), desc=label, disable=not progress) as bar:
            for name, base_tensor, expert_tensors in stream.float32(names):
                task_vectors = torch.stack([expert - base_tensor for expert in expert_tensors]).flatten(1)
                if name in contexts:
                    for task_vector, rule in zip(task_vectors, contexts[name].trim):
                        task_vector.mul_(keep_mask(task_vector.abs(), rule))
                positive = ((task_vectors > 0) * bits).sum(dim=0)
                negative = ((task_vectors < 0) * bits).sum(dim=0)
                histogram += torch.bincount(positive * 2**n_experts + negative, minlength=4**n_experts)
                bar.update()
    finally:
        for checkpoint in [base_checkpoint, *expert_checkpoints]:
            checkpoint.close()
    return histogram


def _subset_patterns(histogram: Tensor, subset: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per histogram bin: which experts of `subset` are positive and which are negative (bit masks)."""
    n_experts = (histogram.numel().bit_length() - 1) // 2
    if any(not 0 <= index < n_experts for index in subset):
        raise ValueError(f"subset {list(subset)} names an expert outside 0..{n_experts - 1}")
    subset_bits = sum(1 << index for index in set(subset))
    patterns = torch.arange(histogram.numel(), dtype=torch.int64)
    return (patterns >> n_experts) & subset_bits, patterns & ((1 << n_experts) - 1) & subset_bits


def conflict_fraction(histogram: Tensor, subset: Sequence[int]) -> float:
    """Fraction of parameters where the experts in `subset` (indices) hold both a positive and a negative
    task-vector value, from a `sign_pattern_histogram`."""
    positive, negative = _subset_patterns(histogram, subset)
    conflicting = (positive != 0) & (negative != 0)
    return float(histogram[conflicting].sum().item() / histogram.sum().item())


def overlap_fraction(histogram: Tensor, subset: Sequence[int]) -> float:
    """Fraction of parameters where at least two experts of `subset` have a nonzero task-vector value
    (where a conflict is possible at all; after trimming most parameters have fewer)."""
    positive, negative = _subset_patterns(histogram, subset)
    nonzero = positive | negative
    shared = (nonzero & (nonzero - 1)) != 0  # at least two bits set
    return float(histogram[shared].sum().item() / histogram.sum().item())


def random_sign_conflict(n_experts: int) -> float:
    """Probability that `n_experts` independent fair-coin signs are not all equal: 1 - 2^(1-n)."""
    return 1.0 - 2.0 ** (1 - n_experts) if n_experts >= 1 else 0.0


def random_sign_baseline(histogram: Tensor, subset: Sequence[int]) -> float:
    """Share of parameters expected to conflict among the experts of `subset` if their nonzero entries
    kept their masks but took independent fair-coin signs: the mean of 1 - 2^(1-k) over parameters, where
    k is the number of those experts nonzero there."""
    positive, negative = _subset_patterns(histogram, subset)
    nonzero = positive | negative
    counts = torch.zeros_like(nonzero)
    for bit in range((histogram.numel().bit_length() - 1) // 2):
        counts += (nonzero >> bit) & 1
    chance = torch.where(
        counts >= 1, 1.0 - 2.0 ** (1 - counts.double()), torch.zeros((), dtype=torch.float64)
    )
    return float((histogram.double() * chance).sum().item() / histogram.sum().item())


def conflict_table(histogram: Tensor) -> pd.DataFrame:
    """Per number of experts (2..n), over every subset of that size: the mean, min and max conflict
    fraction, the mean conflict fraction among the parameters where two or more experts are nonzero, and
    the random-sign baselines: `random_signs` = 1 - 2^(1-n) (every expert nonzero everywhere) and
    `random_signs_masks` (the experts' actual masks, mean over the subsets)."""
    n_experts = (histogram.numel().bit_length() - 1) // 2
    records = []
    for count in range(2, n_experts + 1):
        subsets = list(itertools.combinations(range(n_experts), count))
        fractions = [conflict_fraction(histogram, subset) for subset in subsets]
        overlaps = [overlap_fraction(histogram, subset) for subset in subsets]
        records.append(
            {
                "n_experts": count,
                "subsets": len(fractions),
                "conflict_fraction": sum(fractions) / len(fractions),
                "min": min(fractions),
                "max": max(fractions),
                "conflict_given_overlap": sum(
                    fraction / overlap if overlap else 0.0 for fraction, overlap in zip(fractions, overlaps)
                )
                / len(fractions),
                "random_signs": random_sign_conflict(count),
                "random_signs_masks": sum(random_sign_baseline(histogram, subset) for subset in subsets)
                / len(subsets),
            }
        )
    return pd.DataFrame(records)


def sign_conflicts(
    base: CheckpointRef,
    experts: Sequence[CheckpointRef],
    densities: Sequence[float | None] = (None, 0.2),
    progress: bool = False,
) -> pd.DataFrame:
    """`conflict_table` for each trimming (`density` None: untrimmed), with a `density` column (1.0 for
    untrimmed) and a `trimming` label."""
    frames = []
    for density in densities:
        table = conflict_table(sign_pattern_histogram(base, experts, density, progress))
        table.insert(0, "trimming", "none" if density is None else f"top {density:g}")
        table.insert(1, "density", 1.0 if density is None else float(density))
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def zoo_sign_conflicts(
    sizes_and_kinds: Sequence[tuple[str, str]], densities: Sequence[float | None] = (None, 0.2)
) -> pd.DataFrame:
    """`sign_conflicts` of the eight zoo experts of each (size, base kind); a size not built is an error."""
    from mergelab import zoo

    frames = []
    categories = zoo.load_suite().held_in_categories
    for size, kind in sizes_and_kinds:
        base = zoo.model_path(size, kind, "base")
        experts = [zoo.model_path(size, kind, "expert", category) for category in categories]
        missing = [str(path) for path in [base, *experts] if not (path / "config.json").is_file()]
        if missing:
            raise CheckpointError(f"zoo size '{size}' ({kind}) is not built: {missing[0]}")
        table = sign_conflicts(base, experts, densities)
        table.insert(0, "model", size)
        table.insert(1, "base_kind", kind)
        table.insert(2, "zoo_digest", zoo_experts_digest(size, kind))
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def zoo_experts_digest(size: str, base_kind: str) -> str | None:
    """Identity of the weights a size's conflict table is computed from (its base and eight experts of
    `base_kind`), or None where that base is not built here."""
    from mergelab import zoo
    from mergelab.experiment.scoring import models_fingerprint

    base = zoo.model_path(size, base_kind, "base")
    if not (base / "manifest.json").is_file():
        return None
    categories = zoo.load_suite().held_in_categories
    return models_fingerprint([base, *(zoo.model_path(size, base_kind, "expert", c) for c in categories)])


def draw_sign_conflicts(table: pd.DataFrame, path: Path) -> Path:
    """% of parameters with a sign conflict vs number of experts, one line per trimming, model and base
    kind, with the range over subsets shaded and the random-sign baseline 1 - 2^(1-n) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    for (model, kind, trimming), group in table.groupby(["model", "base_kind", "trimming"], sort=True):
        group = group.sort_values("n_experts")
        line = axis.plot(
            group["n_experts"],
            100 * group["conflict_fraction"],
            marker="o",
            linestyle="-" if trimming == "none" else "--",
            label=f"{model}/{kind}, trimming {trimming}",
        )[0]
        axis.fill_between(
            group["n_experts"], 100 * group["min"], 100 * group["max"], color=line.get_color(), alpha=0.15
        )
    counts = sorted(table["n_experts"].unique())
    axis.plot(
        counts,
        [100 * random_sign_conflict(count) for count in counts],
        color="gray",
        linestyle=":",
        label="random signs, 1 - 2^(1-n)",
    )
    axis.set_xlabel("number of experts")
    axis.set_ylabel("% parameters with sign conflict")
    axis.set_xticks(sorted(table["n_experts"].unique()))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
