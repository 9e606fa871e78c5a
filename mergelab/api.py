"""`mergelab.merge`: the Python entry point for merging checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergelab.checkpoint import Checkpoint, CheckpointError, open_checkpoint, sidecar_files
from mergelab.engine import MergeReport, check_inputs, merge_checkpoints
from mergelab.methods import MergeConfigError, MergeMethod, get_method
from mergelab.output import CheckpointOutput

CheckpointRef = str | Path | Mapping[str, torch.Tensor]


def build_method(method: str | MergeMethod, hparams: Mapping[str, Any]) -> MergeMethod:
    """A method instance from a name and hyperparameters (or an instance, which takes none)."""
    if isinstance(method, MergeMethod):
        if hparams:
            raise MergeConfigError(f"hyperparameters {sorted(hparams)} given with an already built method")
        return method
    return get_method(method, **hparams)


def merge_with_report(
    base: CheckpointRef,
    experts: Sequence[CheckpointRef],
    method: str | MergeMethod,
    out: str | Path | None = None,
    *,
    device: str = "auto",
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    **hparams: Any,
) -> tuple[dict[str, torch.Tensor] | Path, MergeReport]:
    """Like `merge`, also returning the `MergeReport` (tensors, bytes, seconds, peak memory)."""
    merge_method = build_method(method, hparams)
    expert_refs = _expert_list(experts)
    output = CheckpointOutput(out, overwrite=overwrite, max_shard_size=max_shard_size) if out else None
    if output is not None:
        output.refuse_inputs(_local_paths([base, *expert_refs]))
    opened: list[Checkpoint] = []
    try:
        base_checkpoint = open_checkpoint(base, "base")
        opened.append(base_checkpoint)
        for index, expert in enumerate(expert_refs):
            opened.append(open_checkpoint(expert, f"expert {index} ({_describe(expert)})"))
        expert_checkpoints = opened[1:]
        infos, _ = check_inputs(base_checkpoint, expert_checkpoints, merge_method, device)
        if output is None:
            return merge_checkpoints(
                base_checkpoint, expert_checkpoints, merge_method, device=device, progress=progress
            )
        with output:
            output.start(sorted(infos), infos, sidecar_files(base_checkpoint.directory))
            _, report = merge_checkpoints(
                base_checkpoint,
                expert_checkpoints,
                merge_method,
                device=device,
                output=output,
                progress=progress,
            )
            return output.finish(), report
    finally:
        for checkpoint in opened:
            checkpoint.close()


def _expert_list(experts: Sequence[CheckpointRef]) -> list[CheckpointRef]:
    """The experts as a list; a single path or state dict passed by mistake is an error, not its characters."""
    if isinstance(experts, (str, Path, Mapping)) or not isinstance(experts, Sequence):
        raise CheckpointError(
            f"experts must be a list of paths, hub ids or state dicts, not {type(experts).__name__}"
        )
    return list(experts)


def _local_paths(references: Sequence[CheckpointRef]) -> list[Path]:
    """The inputs that are files or directories on this machine."""
    paths = [Path(ref).expanduser() for ref in references if not isinstance(ref, Mapping)]
    return [path.resolve() for path in paths if path.exists()]


def merge(
    base: CheckpointRef,
    experts: Sequence[CheckpointRef],
    method: str | MergeMethod,
    out: str | Path | None = None,
    *,
    device: str = "auto",
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    **hparams: Any,
) -> dict[str, torch.Tensor] | Path:
    """Merge `experts` into `base` with `method` (a registered name or a `MergeMethod`).

    `base` and `experts` are model directories, safetensors files, hub ids or state dicts. Returns the
    merged state dict when `out` is None; otherwise writes a Hugging Face model directory to `out` (with
    the base's config and tokenizer) and returns its path.
    """
    result, report = merge_with_report(
        base,
        experts,
        method,
        out,
        device=device,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        progress=progress,
        **hparams,
    )
    if progress:
        print(report.summary())
    return result


def _describe(reference: CheckpointRef) -> str:
    return "state dict" if isinstance(reference, Mapping) else str(reference)


def load_merged_model(base: str | Path, state_dict: Mapping[str, torch.Tensor]):
    """A `transformers` model with the base's architecture carrying a merged state dict.

    Tied weights (an `lm_head` shared with the embeddings) are absent from checkpoints and state dicts; any
    other missing or unexpected tensor is an error.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = {
        name for name in missing if getattr(model.config, "tie_word_embeddings", False) and "lm_head" in name
    }
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"merged state dict does not fit {base}: missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return model.eval()
