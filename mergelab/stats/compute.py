"""Per-expert statistics on demand: load (or compute once and cache) a statistic for each expert.

`expert_statistics` is what the merge API calls for a data-aware method: for every expert it loads the
examples of its data spec, looks the statistic up in the cache (`StatisticCache`), and on a miss loads the
expert as a `transformers` causal LM, computes the statistic with a progress bar, and stores it. One summary
line per expert says what was done. The method itself never sees files: the engine streams the cached
tensors to it (`StatisticFile`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergelab.engine.checkpoint import CheckpointError
from mergelab.stats.cache import CacheResult, StatisticCache, StatisticFile, StatisticKey
from mergelab.stats.data import ExampleSet, load_examples
from mergelab.stats.encode import EncodedExample, encode_examples
from mergelab.stats.fisher import fisher_diagonal
from mergelab.stats.gram import gram_matrices

Computer = Callable[..., dict[str, torch.Tensor]]
# Below this many parameters a CPU computation runs on one thread: statistics run thousands of small
# forward/backward passes whose ops are too small to split, and on a shared CPU a second thread mostly
# waits (xs Fisher, 1,000 examples, load average ~14: 31 s on 1 thread, over 180 s on 2).
SINGLE_THREAD_PARAMETERS = 20_000_000


def _fisher(model, tokenizer, examples, settings, progress, desc) -> dict[str, torch.Tensor]:
    return fisher_diagonal(
        model, tokenizer, examples, settings["estimator"], seed=settings["seed"], progress=progress, desc=desc
    )


def _gram(model, tokenizer, examples, settings, progress, desc) -> dict[str, torch.Tensor]:
    return gram_matrices(model, tokenizer, examples, progress=progress, desc=desc)


COMPUTERS: dict[str, Computer] = {"fisher": _fisher, "gram": _gram}


@dataclass(frozen=True)
class StatisticRequest:
    """What a method asks of each expert: the statistic `kind`, how many examples (a subset drawn with
    `seed`), from which split, and the settings that change its numbers (part of the cache key)."""

    kind: str
    n_examples: int
    seed: int = 0
    split: str = "train"
    settings: Mapping[str, Any] = field(default_factory=dict)


def load_causal_lm(path: str | Path, device: torch.device):
    """The checkpoint as a float32 `transformers` causal LM in eval mode on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if getattr(config, "is_encoder_decoder", False):
        raise CheckpointError(
            f"{path}: statistics are computed for causal LMs; this is an encoder-decoder model"
        )
    return AutoModelForCausalLM.from_pretrained(path).float().to(device).eval()


@contextlib.contextmanager
def cpu_threads_for(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """One intra-op thread while a small model computes on the CPU; the previous count afterwards."""
    small = sum(parameter.numel() for parameter in model.parameters()) < SINGLE_THREAD_PARAMETERS
    if device.type != "cpu" or not small:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_statistic_tokenizer(path: str | Path, fallback: str | Path | None):
    """The checkpoint's tokenizer, else the fallback's (a base directory), with a pad token."""
    from mergelab.engine.models import load_tokenizer

    candidates = [Path(path), *([Path(fallback)] if fallback is not None else [])]
    for candidate in candidates:
        if any((candidate / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            return load_tokenizer(candidate)
    raise CheckpointError(
        f"{path}: no tokenizer files here or in {fallback}; statistics need one to encode data"
    )


def expert_statistic(
    checkpoint: str | Path,
    data: str | ExampleSet,
    request: StatisticRequest,
    *,
    tokenizer_fallback: str | Path | None = None,
    device: torch.device | str = "cpu",
    cache: StatisticCache | None = None,
    progress: bool = True,
    label: str | None = None,
) -> CacheResult:
    """The cached statistic of one expert on `data` (a data spec or already loaded examples)."""
    if request.kind not in COMPUTERS:
        raise ValueError(f"unknown statistic '{request.kind}'; valid: {sorted(COMPUTERS)}")
    examples = (
        data
        if isinstance(data, ExampleSet)
        else load_examples(data, request.n_examples, request.seed, request.split)
    )
    key = StatisticKey(
        kind=request.kind,
        checkpoint=str(checkpoint),
        data=examples.spec,
        split=examples.split,
        n_examples=request.n_examples,
        fingerprint=examples.fingerprint,
        settings={"seed": request.seed, **request.settings},
    )
    desc = f"{request.kind} {label or Path(checkpoint).name}"

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        model = load_causal_lm(checkpoint, torch.device(device))
        tokenizer = load_statistic_tokenizer(checkpoint, tokenizer_fallback)
        encoded: list[EncodedExample] = encode_examples(tokenizer, examples.examples)
        with cpu_threads_for(model, torch.device(device)):
            tensors = COMPUTERS[request.kind](model, tokenizer, encoded, dict(key.settings), progress, desc)
        return tensors, {"examples": str(len(encoded))}

    result = (cache or StatisticCache()).fetch(key, compute)
    if progress:
        how = "cached" if result.hit else f"computed in {result.seconds:.1f} s"
        tqdm.write(f"{desc}: {len(examples.examples)} examples of {examples.spec} ({how}) -> {result.path}")
    return result


def expert_statistics(
    checkpoints: Sequence[str | Path],
    data: Sequence[str],
    request: StatisticRequest,
    *,
    tokenizer_fallback: str | Path | None = None,
    device: torch.device | str = "cpu",
    cache: StatisticCache | None = None,
    progress: bool = True,
) -> list[StatisticFile]:
    """Open statistic files, one per expert in order (computed first where not cached)."""
    results = [
        expert_statistic(
            checkpoint,
            spec,
            request,
            tokenizer_fallback=tokenizer_fallback,
            device=device,
            cache=cache,
            progress=progress,
            label=f"expert {index}",
        )
        for index, (checkpoint, spec) in enumerate(zip(checkpoints, data, strict=True))
    ]
    return [StatisticFile(result.path) for result in results]
