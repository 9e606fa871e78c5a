"""Gram matrices of every linear layer's inputs, the statistic RegMean (Jin et al., 2023) merges with.

For a linear layer `y = x W^T (+ b)` and the inputs `x` it sees on an expert's data (every real token of
prompt + answer, padding excluded), `G = X^T X / n_tokens`: the mean over tokens, as FusionBench's running
average, so experts with different amounts of data weigh alike. Inputs are captured with forward hooks on
every `torch.nn.Linear` whose weight the checkpoint stores under the module's own name; a linear layer whose
weight is tied to another tensor (an `lm_head` sharing the embedding) gets no Gram matrix, because its
stored tensor is also an embedding, and is merged by the fallback rule. Matrices are keyed by the weight's
tensor name (`<module>.weight`), so the engine looks them up like any per-tensor statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mergelab.eval.inputs import padding_id, right_padded
from mergelab.stats.encode import EncodedExample


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Weight tensor name -> linear module, for linear layers whose weight is stored under its own name."""
    stored = {name for name, _ in model.named_parameters()}
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" in stored
    }


@torch.no_grad()
def gram_matrices(
    model,
    tokenizer,
    examples: Sequence[EncodedExample],
    *,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "gram",
) -> dict[str, torch.Tensor]:
    """`X^T X / n_tokens` of every linear layer's inputs over prompt + labelled answer of each example."""
    if not examples:
        raise ValueError("Gram matrices need at least one example")
    layers = linear_layers(model)
    device = next(model.parameters()).device
    grams = {
        name: torch.zeros(module.in_features, module.in_features, dtype=torch.float32, device=device)
        for name, module in layers.items()
    }
    token_mask: list[torch.Tensor] = []

    def hook_for(name: str):
        def hook(module, inputs, output):
            features = inputs[0][token_mask[0]].float()
            grams[name].addmm_(features.T, features)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers.items()]
    rows = sorted((example.prompt + example.target for example in examples), key=len, reverse=True)
    pad_id = padding_id(tokenizer)
    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(
            range(0, len(rows), batch_size), desc=desc, disable=not progress, unit="batch", leave=False
        ):
            input_ids, attention_mask = right_padded(rows[start : start + batch_size], pad_id)
            token_mask[:] = [attention_mask.bool().to(device)]
            model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
            n_tokens += int(attention_mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: gram / n_tokens for name, gram in grams.items()}
