"""`mergelab.merge`: the Python entry point for merging checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergelab.api.options import check_job_options
from mergelab.api.output_options import base_sidecars, open_output
from mergelab.api.suspicious import warn_suspicious_inputs
from mergelab.api.tensor_hparams import TensorHparams, tensor_methods
from mergelab.engine.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from mergelab.engine.device import resolve_device
from mergelab.engine.lora import is_adapter, open_expert
from mergelab.engine.merge import MergeReport, check_inputs, merge_checkpoints
from mergelab.engine.precision import parse_precision, record_config_dtype
from mergelab.engine.vocabulary import parse_tokenizer_choice, plan_vocabulary
from mergelab.methods import MergeConfigError, MergeMethod, get_method

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
    overwrite: bool | str = False,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    data: Sequence[str] | None = None,
    statistics_progress: bool | None = None,
    allow_nonfinite: bool = False,
    dtype: str = "float32",
    out_dtype: str | None = None,
    tokenizer_source: str = "base",
    chat_template: str | None = None,
    kernel: str = "fused",
    threads: int | None = None,
    tensor_hparams: TensorHparams | None = None,
    **hparams: Any,
) -> tuple[dict[str, torch.Tensor] | Path, MergeReport]:
    """Like `merge`, also returning the `MergeReport` (tensors, bytes, seconds, peak memory).

    `statistics_progress` (default: `progress`) shows the bars and summary lines of statistic computation.
    """
    merge_method = build_method(method, hparams)
    check_job_options(device=device, max_shard_size=max_shard_size, allow_nonfinite=allow_nonfinite)
    expert_refs = _expert_list(experts)
    warn_suspicious_inputs(base, expert_refs, uses_base=merge_method.uses_base)
    precision = parse_precision(dtype, out_dtype)
    precision.check_method(merge_method)
    tokens = parse_tokenizer_choice(tokenizer_source, chat_template, len(expert_refs))
    options = {
        "device": device,
        "max_shard_size": max_shard_size,
        "dtype": dtype,
        "out_dtype": out_dtype,
        "tokenizer_source": tokenizer_source,
        "chat_template": chat_template,
    }
    if data is not None:
        options["data"] = list(data)
    output = open_output(
        out,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        method=merge_method,
        base=base,
        experts=expert_refs,
        options=options,
        tensor_hparams=tensor_hparams,
    )
    if getattr(merge_method, "whole_model", False):  # PLeaS: whole models, not tensor by tensor
        adapters = [str(ref) for ref in expert_refs if is_adapter(ref)]
        if adapters:
            raise CheckpointError(
                f"method '{merge_method.name}' merges whole models, not LoRA adapters: {adapters}"
            )
        if not (precision.is_default and tokens.is_default):
            raise MergeConfigError(
                f"method '{merge_method.name}' merges whole models in float32 with the base's tokenizer; "
                "dtype, out_dtype, tokenizer_source and chat_template keep their defaults"
            )
        if tensor_hparams:
            raise MergeConfigError(f"method '{merge_method.name}' takes no per-tensor hyperparameters")
        if allow_nonfinite:
            raise MergeConfigError(
                f"method '{merge_method.name}' aligns experts by their activations and needs finite weights; "
                "allow_nonfinite applies to the tensor-wise methods"
            )
        from mergelab.pleas.merge import merge_whole_model

        return merge_whole_model(
            merge_method,
            base,
            expert_refs,
            output,
            data=data,
            device=device,
            progress=progress,
        )
    opened: list[Checkpoint] = []
    statistics: list = []
    try:
        base_checkpoint = open_checkpoint(base, "base")
        opened.append(base_checkpoint)
        sidecars = base_sidecars(base, base_checkpoint) if output is not None else []
        for index, expert in enumerate(expert_refs):
            opened.append(open_expert(expert, base_checkpoint, f"expert {index} ({_describe(expert)})"))
        vocabulary = plan_vocabulary(tokens, base_checkpoint, opened[1:])
        base_checkpoint, expert_checkpoints = vocabulary.base, vocabulary.experts
        infos, _ = check_inputs(base_checkpoint, expert_checkpoints, merge_method, device)
        per_tensor = (
            tensor_methods(method, hparams, tensor_hparams, infos, len(expert_checkpoints))
            if tensor_hparams
            else None
        )
        statistics = _expert_statistics(
            merge_method,
            base_checkpoint,
            expert_checkpoints,
            data,
            device,
            progress if statistics_progress is None else statistics_progress,
        )
        if output is None:
            return merge_checkpoints(
                base_checkpoint,
                expert_checkpoints,
                merge_method,
                device=device,
                progress=progress,
                statistics=statistics,
                allow_nonfinite=allow_nonfinite,
                precision=precision,
                kernel=kernel,
                threads=threads,
                tensor_methods=per_tensor,
            )
        with output:
            output.start(sorted(infos), precision.output_infos(infos), sidecars)
            vocabulary.write(output.temp_path)
            record_config_dtype(output.temp_path / "config.json", precision)
            _, report = merge_checkpoints(
                base_checkpoint,
                expert_checkpoints,
                merge_method,
                device=device,
                output=output,
                progress=progress,
                statistics=statistics,
                allow_nonfinite=allow_nonfinite,
                precision=precision,
                kernel=kernel,
                threads=threads,
                tensor_methods=per_tensor,
            )
            return output.finish(), report
    finally:
        for checkpoint in opened:
            checkpoint.close()
        for statistic in statistics:
            statistic.close()


def _expert_statistics(
    method: MergeMethod,
    base: Checkpoint,
    experts: Sequence[Checkpoint],
    data: Sequence[str] | None,
    device: str,
    progress: bool,
) -> list:
    """The experts' cached statistics (`mergelab.stats.StatisticFile`) for a data-aware method, else []."""
    if method.statistic is None:
        if data is not None:
            raise MergeConfigError(
                f"data= is used only by data-aware methods; method '{method.name}' takes none"
            )
        return []
    from mergelab.stats import StatisticRequest, check_data_specs, expert_statistics

    specs = check_data_specs(data, len(experts), method.name)
    for expert in experts:
        if expert.directory is None:
            raise CheckpointError(
                f"method '{method.name}' runs each expert on data: {expert.label} must be a model directory "
                "or hub id, not a state dict"
            )
    request = StatisticRequest(kind=method.statistic, **method.statistic_request())
    statistics = expert_statistics(
        [expert.directory for expert in experts],
        specs,
        request,
        tokenizer_fallback=base.directory,
        device=resolve_device(device),
        progress=progress,
    )
    for expert, statistic in zip(experts, statistics):
        if not set(statistic.names) & set(expert.infos()):
            for opened in statistics:
                opened.close()
            raise CheckpointError(
                f"{expert.label}: its {method.statistic} statistic ({statistic.path}) names none of the "
                "checkpoint's tensors; the model's parameter names differ from the stored ones"
            )
    return statistics


def _expert_list(experts: Sequence[CheckpointRef]) -> list[CheckpointRef]:
    """The experts as a list; a single path or state dict passed by mistake is an error, not its characters."""
    if isinstance(experts, (str, Path, Mapping)) or not isinstance(experts, Sequence):
        raise CheckpointError(
            f"experts must be a list of paths, hub ids or state dicts, not {type(experts).__name__}"
        )
    return list(experts)


def merge(
    base: CheckpointRef,
    experts: Sequence[CheckpointRef],
    method: str | MergeMethod,
    out: str | Path | None = None,
    *,
    device: str = "auto",
    overwrite: bool | str = False,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    data: Sequence[str] | None = None,
    allow_nonfinite: bool = False,
    dtype: str = "float32",
    out_dtype: str | None = None,
    tokenizer_source: str = "base",
    chat_template: str | None = None,
    kernel: str = "fused",
    threads: int | None = None,
    tensor_hparams: TensorHparams | None = None,
    **hparams: Any,
) -> dict[str, torch.Tensor] | Path:
    """Merge `experts` into `base` with `method` (a registered name or a `MergeMethod`).

    `base` and `experts` are model directories, safetensors files, hub ids or state dicts. Returns the
    merged state dict when `out` is None; otherwise writes a Hugging Face model directory to `out` (with
    the base's config and tokenizer, `mergelab.json` recording the merge and a `README.md` model card) and
    returns its path. An existing `out` is replaced only with `overwrite=True` when mergelab wrote it (it
    has `mergelab.json`) or with `overwrite="force"`; an empty directory is always fine.

    Data-aware methods (fisher, regmean) compute a statistic of each expert on its training data, once, and
    cache it under `$MERGELAB_HOME/stats`: `data` gives one data spec per expert, `zoo:<category>` (the
    embedded zoo's train split of that category's tasks) or a directory written by `datasets.save_to_disk`
    with columns prompt, target (and choices, label for classification); see `mergelab.stats.data`.

    NaN or inf in an input tensor, or in a merged tensor from finite inputs, is an error naming the
    checkpoint, tensor and count; `allow_nonfinite=True` merges anyway, with a warning.

    `dtype` is the compute dtype (float32, or float64 for methods that do not trim); `out_dtype` the dtype of
    the merged float tensors (float32, float16, bfloat16; default: the base's). `tokenizer_source` (`base`,
    `expert:<i>`, `union`) and `chat_template` (`base`, `expert:<i>`; default: the tokenizer source's) say
    whose tokenizer and chat template the output carries; see `mergelab.engine.vocabulary`.
    `tensor_hparams` maps tensor names to hyperparameters of their own (`{name: {"density": 0.5}}`): those
    tensors are merged with `hparams` updated by them (see `mergelab.api.tensor_hparams`).

    On the CPU, task arithmetic, average, TIES and DARE run as fused kernels on `threads` threads (default:
    torch's thread count, all cores unless OMP_NUM_THREADS says otherwise); `kernel="reference"` runs the
    methods' torch code instead, with bit-identical results.
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
        data=data,
        allow_nonfinite=allow_nonfinite,
        dtype=dtype,
        out_dtype=out_dtype,
        tokenizer_source=tokenizer_source,
        chat_template=chat_template,
        kernel=kernel,
        threads=threads,
        tensor_hparams=tensor_hparams,
        **hparams,
    )
    if progress:
        print(report.summary())
    return result


def _describe(reference: CheckpointRef) -> str:
    return "state dict" if isinstance(reference, Mapping) else str(reference)


def load_merged_model(base: str | Path, state_dict: Mapping[str, torch.Tensor]):
    """A `transformers` model with the base's architecture carrying a merged state dict.

    The class follows the base (`mergelab.engine.models.model_class`: seq2seq for T5-like models, else causal LM). Tied
    weights (an `lm_head` or T5's encoder/decoder embeddings sharing storage with a loaded tensor) are absent
    from checkpoints and state dicts; any other missing or unexpected tensor is an error.
    """
    from mergelab.engine.models import model_class
    from mergelab.pleas.partial import widened_config

    auto_class = model_class(base)
    model = auto_class.from_pretrained(base)
    widened = widened_config(model.config, state_dict)  # a PLeaS merge with budget > 1 has wider MLPs
    if widened is not None:
        model = auto_class.from_config(widened)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    storage = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}
    loaded = {storage[name] for name in state_dict if name in storage}
    tied = {name for name in missing if storage[name] in loaded}
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"merged state dict does not fit {base}: missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return model.eval()
