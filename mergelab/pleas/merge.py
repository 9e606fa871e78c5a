"""PLeaS end to end: align experts to the first one, merge partially within a width budget, refit layers.

`pleas_merge_models` works on loaded models and token batches (what tests use); `pleas_merge_directories`
loads checkpoints and their calibration data; `merge_whole_model` is what `mergelab.merge` and
`mergelab run` call for a whole-model method: it returns the merged state dict or writes a checkpoint whose
config carries the merged (possibly wider) intermediate size.

Expert 0 is the reference the others are aligned to. Embeddings, norms and `lm_head` are averaged after
alignment and not refit (refitting a tied `lm_head` would untie it from the embeddings); every linear layer
inside the decoder blocks is refit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mergelab.engine.finite import FiniteCheck, NonFiniteError, nonfinite_count
from mergelab.engine.merge import MergeReport
from mergelab.engine.output import CheckpointOutput
from mergelab.methods.base import MergeMethod
from mergelab.pleas.activations import LlamaShape, llama_shape
from mergelab.pleas.calibration import Batch, calibration_examples, token_batches
from mergelab.pleas.fit import LayerFit, fit_merged_model
from mergelab.pleas.matching import Alignment, align, permute_state_dict
from mergelab.pleas.partial import merged_unit_counts, mlp_layouts, partial_merge

BATCH_SIZE = 32


@dataclass(frozen=True)
class PleasOptions:
    """The hyperparameters of one PLeaS merge (see `mergelab.pleas.method` for their meaning)."""

    budget: float | Sequence[float] = 1.0
    n_examples: int = 1600
    ridge: float = 1e-4
    fit: str = "least_squares"


def _check_same_shape(shapes: Sequence[LlamaShape]) -> LlamaShape:
    for index, shape in enumerate(shapes[1:], start=1):
        if shape != shapes[0]:
            raise ValueError(f"pleas: expert {index} has shape {shape}, expert 0 has {shapes[0]}")
    return shapes[0]


def pleas_merge_models(
    experts: Sequence[nn.Module],
    batches: Sequence[Batch],
    options: PleasOptions,
    *,
    compare_adam: bool = False,
    progress: bool = False,
) -> tuple[nn.Module, list[LayerFit]]:
    """The merged model of `experts` (unchanged) and the per-layer fit errors (empty for fit=none)."""
    if not experts:
        raise ValueError("pleas: no experts to merge")
    shape = _check_same_shape([llama_shape(expert, f"expert {i}") for i, expert in enumerate(experts)])
    experts = [expert.eval() for expert in experts]
    alignments = [Alignment.identity(shape)] + [
        align(experts[0], expert, batches, shape, progress)
        for expert in tqdm(experts[1:], desc="pleas align", disable=not progress, leave=False)
    ]
    states = [
        permute_state_dict(
            {name: value.float().cpu() for name, value in expert.state_dict().items()}, alignment, shape
        )
        for expert, alignment in zip(experts, alignments)
    ]
    qualities = [
        torch.stack([alignment.mlp_quality[layer] for alignment in alignments[1:]]).mean(0)
        if len(alignments) > 1
        else torch.ones(shape.intermediate)
        for layer in range(shape.layers)
    ]
    counts = merged_unit_counts(options.budget, shape, len(experts))
    layouts = mlp_layouts(qualities, counts, len(experts))
    config = copy.deepcopy(experts[0].config)
    config.intermediate_size = layouts[0].width
    device = next(experts[0].parameters()).device
    merged = type(experts[0])(config).to(device).eval()
    merged.load_state_dict(partial_merge(states, layouts))
    if options.fit == "none":
        return merged, []
    aligned = []  # copies of the experts with permuted weights: the fit's targets
    for expert, state in zip(experts, states):
        aligned_expert = copy.deepcopy(expert)
        aligned_expert.load_state_dict(state)
        aligned.append(aligned_expert.eval())
    report = fit_merged_model(
        merged,
        aligned,
        layouts,
        batches,
        shape,
        fit=options.fit,
        ridge=options.ridge,
        compare_adam=compare_adam,
        progress=progress,
    )
    return merged, report


def load_experts(expert_dirs: Sequence[Path], device: torch.device) -> list[nn.Module]:
    """The experts in float32 on `device`; NaN or inf in any weight is an error naming the expert and the
    tensor (PLeaS aligns experts by their activations, which a non-finite weight makes undefined), checked
    on the loaded weights so that each checkpoint is read once."""
    from transformers import AutoModelForCausalLM

    experts = []
    for index, path in enumerate(expert_dirs):
        expert = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        for name, tensor in expert.state_dict().items():
            count = nonfinite_count(tensor)
            if count:
                raise NonFiniteError(
                    f"expert {index} ({path}): tensor '{name}' has {count} non-finite (NaN or inf) "
                    f"value(s) of {tensor.numel()}; PLeaS cannot align or merge it"
                )
        experts.append(expert.to(device).eval())
    return experts


def calibration_batches(
    base_dir: Path, data: Sequence[str] | None, n_experts: int, n_examples: int
) -> list[Batch]:
    """The token batches every expert is run on (the base's tokenizer; padded with pad, else eos)."""
    from mergelab.engine.checkpoint import CheckpointError
    from mergelab.engine.models import load_tokenizer
    from mergelab.eval.inputs import padding_id

    try:
        tokenizer = load_tokenizer(base_dir)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"base {base_dir}: no tokenizer could be loaded ({reason}); method 'pleas' tokenizes its "
            "calibration data with the base's tokenizer, so give a base directory with tokenizer files"
        ) from None
    examples = calibration_examples(data, n_experts, tokenizer, n_examples)
    return token_batches(examples, BATCH_SIZE, padding_id(tokenizer))


def pleas_merge_directories(
    base_dir: Path,
    expert_dirs: Sequence[Path],
    data: Sequence[str] | None,
    options: PleasOptions,
    device: torch.device,
    *,
    compare_adam: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, list[LayerFit]]:
    """PLeaS on checkpoint directories, calibrated on one data spec per expert (`mergelab.stats.data`)."""
    batches = calibration_batches(base_dir, data, len(expert_dirs), options.n_examples)
    experts = load_experts(expert_dirs, device)
    return pleas_merge_models(experts, batches, options, compare_adam=compare_adam, progress=progress)


def merged_state_dict(model: nn.Module, stored: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """The merged tensors as a checkpoint stores them: on the CPU, in the experts' stored dtypes (`stored`),
    without a tied `lm_head`."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    return {
        name: tensor.detach().to(device="cpu", dtype=stored.get(name, tensor.dtype)).contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }


def _directories(method: MergeMethod, base: object, experts: Sequence[object]) -> tuple[list[Path], dict]:
    """Local directories of the base and experts (hub ids resolved) and expert 0's stored tensor dtypes."""
    from mergelab.engine.checkpoint import CheckpointError, open_checkpoint

    directories, stored = [], {}
    for label, reference in [("base", base)] + [(f"expert {i}", e) for i, e in enumerate(experts)]:
        checkpoint = open_checkpoint(reference, label)
        try:
            if checkpoint.directory is None:
                raise CheckpointError(
                    f"{label}: method '{method.name}' needs a model directory, not a state dict"
                )
            if label == "expert 0":
                stored = {
                    name: info.dtype
                    for name, info in checkpoint.infos().items()
                    if info.dtype.is_floating_point
                }
        finally:
            checkpoint.close()
        directories.append(Path(checkpoint.directory))
    return directories, stored


def merge_whole_model(
    method: MergeMethod,
    base: object,
    experts: Sequence[object],
    output: CheckpointOutput | None,
    *,
    data: Sequence[str] | None,
    device: str,
    progress: bool,
) -> tuple[dict[str, torch.Tensor] | Path, MergeReport]:
    """Run a whole-model method (`method.merge_models`) for `mergelab.merge`: (state dict or path, report).

    A written checkpoint gets the merged model's config (e.g. PLeaS's wider intermediate size) over the
    base's, beside the base's tokenizer files. NaN or inf in an expert, or in the merged model, is an error
    naming the tensor before anything is written, as for the tensor-wise methods.
    """
    from mergelab.engine.checkpoint import TensorInfo, sidecar_files
    from mergelab.engine.device import peak_rss_bytes, resolve_device

    directories, stored = _directories(method, base, experts)
    sidecars = sidecar_files(directories[0], require_config=True) if output is not None else []
    compute = resolve_device(device)
    if compute.type == "cuda":
        torch.cuda.reset_peak_memory_stats(compute)
    started = time.perf_counter()
    model = method.merge_models(directories[0], directories[1:], data, compute, progress)
    state_dict = merged_state_dict(model, stored)
    finite = FiniteCheck()
    for name, tensor in state_dict.items():
        finite.merged(name, tensor, method.name)
    result: dict[str, torch.Tensor] | Path = state_dict
    if output is not None:
        infos = {name: TensorInfo(tensor.dtype, tuple(tensor.shape)) for name, tensor in state_dict.items()}
        model.config.dtype = state_dict["model.embed_tokens.weight"].dtype
        with output:
            output.start(sorted(infos), infos, sidecars)
            model.config.save_pretrained(output.temp_path)  # the merged shape, over the base's config
            for name in sorted(state_dict):
                output.write(name, state_dict[name])
            result = output.finish()
    report = MergeReport(
        tensors=len(state_dict),
        bytes_written=output.bytes_written if output is not None else 0,
        seconds=time.perf_counter() - started,
        peak_rss_bytes=peak_rss_bytes(),
        peak_device_bytes=torch.cuda.max_memory_allocated(compute) if compute.type == "cuda" else 0,
        device=str(compute),
        out=output.final_path if output is not None else None,
    )
    return result, report
