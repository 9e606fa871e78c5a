"""Per-tensor hyperparameters: some tensors merged with their own instance of the method.

mergekit configurations set hyperparameters per layer (a `value` list interpolated across layers) and per
module (`filter: self_attn`). `mergelab.merge(..., tensor_hparams={name: {option: value}})` carries such
settings as data: each named tensor is merged by the method built from the shared hyperparameters updated
with its own, and every other tensor by the shared method. Instances are shared between tensors with the
same settings, and each one is validated before anything is read or written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mergelab.engine.checkpoint import CheckpointError, TensorInfo, is_float
from mergelab.methods import MergeConfigError, MergeMethod, get_method

TensorHparams = Mapping[str, Mapping[str, Any]]


def tensor_methods(
    method: str | MergeMethod,
    hparams: Mapping[str, Any],
    tensor_hparams: TensorHparams,
    infos: Mapping[str, TensorInfo],
    n_experts: int,
) -> dict[str, MergeMethod]:
    """The method instance for each tensor named in `tensor_hparams`, checked against the base's tensors
    (`infos`) and the number of experts."""
    if not isinstance(method, str):
        raise MergeConfigError("tensor_hparams needs the method by name, not an already built method")
    built: dict[str, MergeMethod] = {}
    methods: dict[str, MergeMethod] = {}
    for name, overrides in tensor_hparams.items():
        if name not in infos:
            raise CheckpointError(f"tensor_hparams names tensor '{name}', which the base does not have")
        if not is_float(infos[name].dtype):
            raise CheckpointError(
                f"tensor_hparams names tensor '{name}' ({infos[name].dtype}): only float tensors are merged"
            )
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in built:
            try:
                built[key] = get_method(method, **{**hparams, **overrides})
                built[key].expert_weights(n_experts)
            except MergeConfigError as error:
                raise MergeConfigError(f"tensor '{name}': {error}") from None
            if built[key].statistic is not None or getattr(built[key], "whole_model", False):
                raise MergeConfigError(f"method '{method}' takes no per-tensor hyperparameters")
        methods[name] = built[key]
    return methods
