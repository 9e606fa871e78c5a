"""Activations of Llama decoder blocks on calibration batches, captured with forward hooks.

PLeaS reads three kinds of hidden units: the residual stream (the input of every decoder layer and of the
final norm), the attention heads' outputs (the input of `o_proj`) and the MLP's intermediate units (the
input of `down_proj`); and, for the layer-wise fit, the inputs and outputs of every linear layer. A forward
pass that has captured everything it was asked for stops early, so fitting layer l costs only the blocks up
to l.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mergelab.pleas.calibration import Batch

ATTENTION_INPUTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_INPUTS = ("mlp.gate_proj", "mlp.up_proj")
# Linear layers of one block that read the same input, in the order a forward pass reaches them.
LINEAR_GROUPS = (ATTENTION_INPUTS, ("self_attn.o_proj",), MLP_INPUTS, ("mlp.down_proj",))


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of a Llama causal LM that PLeaS permutes and widens."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @property
    def heads_per_group(self) -> int:
        """Query heads sharing one key/value head (1 without grouped-query attention)."""
        return self.heads // self.kv_heads


def llama_shape(model: nn.Module, label: str = "model") -> LlamaShape:
    """The shape of a `LlamaForCausalLM`-like model; anything else (or linear biases) is an error naming it."""
    config = model.config
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(model, "lm_head"):
        raise ValueError(f"pleas: {label} ({type(model).__name__}) is not a Llama-architecture causal LM")
    for name in (*ATTENTION_INPUTS, "self_attn.o_proj", *MLP_INPUTS, "mlp.down_proj"):
        try:
            module = layers[0].get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"pleas: {label} has no {name} in its decoder blocks (not a Llama block)"
            ) from None
        if getattr(module, "bias", None) is not None:
            raise ValueError(
                f"pleas: {label}'s {name} has a bias; PLeaS supports Llama blocks without biases"
            )
    heads = config.num_attention_heads
    return LlamaShape(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate=config.intermediate_size,
    )


def block(model: nn.Module, layer: int) -> nn.Module:
    return model.model.layers[layer]


class _Captured(Exception):
    """Raised by a hook once every requested activation of a batch is in hand."""


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def capture(
    model: nn.Module, batch: Batch, inputs: dict[str, nn.Module], outputs: dict[str, nn.Module] | None = None
) -> dict[str, Tensor]:
    """Inputs of the modules `inputs` and outputs of `outputs` on one batch, as (valid tokens x features).

    Padding positions are dropped. The forward pass ends as soon as every module has run.
    """
    outputs = outputs or {}
    device = next(model.parameters()).device
    input_ids, attention_mask = (tensor.to(device) for tensor in batch)
    valid = attention_mask.reshape(-1).bool()
    found: dict[str, Tensor] = {}
    wanted = len(inputs) + len(outputs)

    def keep(key: str, value: Tensor) -> None:
        found[key] = value.reshape(-1, value.shape[-1])[valid].float()
        if len(found) == wanted:
            raise _Captured

    handles = [
        module.register_forward_pre_hook(
            lambda _, args, kwargs, key=key: keep(key, _first_input(args, kwargs)), with_kwargs=True
        )
        for key, module in inputs.items()
    ] + [
        module.register_forward_hook(lambda _, __, output, key=key: keep(key, output))
        for key, module in outputs.items()
    ]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted((set(inputs) | set(outputs)) - set(found))
    if missing:
        raise RuntimeError(f"pleas: the forward pass never reached {missing}")
    return found


def matching_modules(model: nn.Module, shape: LlamaShape) -> dict[str, nn.Module]:
    """Modules whose inputs PLeaS matches units on: residual stream, head outputs and MLP units per layer."""
    modules = {f"residual.{layer}": block(model, layer) for layer in range(shape.layers)}
    modules[f"residual.{shape.layers}"] = model.model.norm
    for layer in range(shape.layers):
        modules[f"heads.{layer}"] = block(model, layer).get_submodule("self_attn.o_proj")
        modules[f"mlp.{layer}"] = block(model, layer).get_submodule("mlp.down_proj")
    return modules


def paired_activations(
    models: Sequence[nn.Module], batches: Sequence[Batch], modules_of
) -> Iterator[list[dict[str, Tensor]]]:
    """Per batch, each model's captured inputs of `modules_of(model)` (same tokens for every model)."""
    for batch in batches:
        yield [capture(model, batch, modules_of(model)) for model in models]
