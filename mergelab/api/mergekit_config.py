"""mergekit YAML configurations read into mergelab merges (`mergelab merge config=FILE.yml`).

A mergekit file names a `merge_method`, a `base_model`, the `models` with per-model `parameters` (`weight`,
`density`, ...), global `parameters` (`normalize`, `lambda`, `int8_mask`, `t`, ...) and a `dtype`. Every
parameter may be a scalar, a gradient (a list interpolated across layers) or a list of `filter`/`value`
conditions matched against tensor names; precedence runs model, then slice, then global, as in mergekit
0.1.5. Here each setting is resolved per tensor of the base checkpoint exactly as mergekit resolves it (layer
`i` of `L` gets `t = i / (L - 1)`, tensors outside the layers `t = 0`), mapped to the mergelab method and
hyperparameters with the same meaning, and handed to `mergelab.merge` as shared hyperparameters plus
`tensor_hparams` for the tensors that differ. What mergelab cannot reproduce is refused with an error
naming the key; options that change nothing here (`int8_mask`) are accepted with a printed note.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergelab.engine.checkpoint import open_checkpoint
from mergelab.methods import METHODS, MergeConfigError

REQUIRED = object()  # a mergekit parameter without a default
TOP_LEVEL_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "modules",
)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# The layer index in a tensor name (`model.layers.3.mlp...`, GPT-2's `h.3.`, `blocks.3.`).
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks?)\.(\d+)\.")


class MergekitConfigError(MergeConfigError):
    """A mergekit configuration mergelab cannot read or cannot merge the same way."""


@dataclass(frozen=True)
class MethodSpec:
    """How one mergekit method maps onto mergelab: its parameters (name -> default or REQUIRED), shared
    or per model, whether `base_model` is a task-vector base, and the mergelab hyperparameters of one tensor
    from the resolved shared and per-expert values."""

    mergelab: str
    shared: Mapping[str, Any]
    per_model: Mapping[str, Any]
    hparams: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], dict[str, Any]]
    base: str = "task_vectors"  # task_vectors | ignored (linear) | endpoint (slerp: the t = 0 model)


@dataclass(frozen=True)
class MergekitPlan:
    """A mergekit configuration as one `mergelab.merge` call."""

    base: str
    experts: tuple[str, ...]
    method: str
    hparams: dict[str, Any]
    tensor_hparams: dict[str, dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default=())

    def merge_arguments(self) -> dict[str, Any]:
        """Keyword arguments of `mergelab.merge` besides `out` and the run options."""
        arguments: dict[str, Any] = {"base": self.base, "experts": list(self.experts), "method": self.method}
        if self.tensor_hparams:
            arguments["tensor_hparams"] = self.tensor_hparams
        return {**arguments, **self.options, **self.hparams}


def _weights(models: Sequence[Mapping[str, Any]], normalize: bool) -> tuple[float, ...]:
    """The models' weights, divided by their sum when `normalize` (unless it is ~0, as mergekit)."""
    weights = [float(model["weight"]) for model in models]
    total = sum(weights)
    if normalize and abs(total) >= 1e-8:
        weights = [weight / total for weight in weights]
    return tuple(weights)


def _common(models: Sequence[Mapping[str, Any]], name: str, method: str) -> float:
    """The one value of a per-model parameter that the mergelab method takes for all experts."""
    values = {float(model[name]) for model in models}
    if len(values) > 1:
        raise MergekitConfigError(
            f"parameters.{name}: mergelab's '{method}' takes one {name} for all models, got {sorted(values)}"
        )
    return values.pop()


def _per_expert(models: Sequence[Mapping[str, Any]], name: str) -> float | tuple[float, ...]:
    values = tuple(float(model[name]) for model in models)
    return values[0] if len(set(values)) == 1 else values


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise MergekitConfigError(f"{key}: {message}")


def _task_arithmetic(shared, models) -> dict[str, Any]:
    return {"scale": shared["lambda"], "weights": _weights(models, shared["normalize"])}


def _ties(shared, models) -> dict[str, Any]:
    _require(
        not shared["rescale"], "parameters.rescale", "mergelab's ties does not rescale trimmed task vectors"
    )
    return {
        "density": _per_expert(models, "density"),
        "scale": shared["lambda"],
        "trim_scope": "tensor",
        "sign": "sum",
        "elect": True,
        "agg": "mean" if shared["normalize"] else "sum",
        "weights": _weights(models, False),
    }


def _dare(combine: str):
    def hparams(shared, models) -> dict[str, Any]:
        _require(
            shared["rescale"],
            "parameters.rescale",
            "mergelab's dare always rescales the surviving entries (by 1 / density)",
        )
        if combine == "ties":
            _require(
                shared["normalize"],
                "parameters.normalize",
                "dare_ties with normalize: false (mergekit's default) sums the agreeing entries; mergelab's "
                "dare (combine: ties) takes their disjoint mean: set normalize: true to use it",
            )
        return {
            "density": _per_expert(models, "density"),
            "scale": shared["lambda"],
            "combine": combine,
            "seed": 0,
            "weights": _weights(models, shared["normalize"] and combine == "linear"),
        }

    return hparams


def _breadcrumbs(combine: str):
    def hparams(shared, models) -> dict[str, Any]:
        _require(not shared["rescale"], "parameters.rescale", "mergelab's breadcrumbs does not rescale")
        if combine == "ties":
            _require(
                not shared["normalize"],
                "parameters.normalize",
                "mergelab's breadcrumbs (combine: ties) sums the agreeing entries (normalize: false)",
            )
        return {
            "density": _common(models, "density", "breadcrumbs"),
            "gamma": _common(models, "gamma", "breadcrumbs"),
            "scale": shared["lambda"],
            "combine": combine,
            "weights": _weights(models, shared["normalize"] and combine == "linear"),
        }

    return hparams


def _della(combine: str):
    def hparams(shared, models) -> dict[str, Any]:
        _require(
            shared["rescale"],
            "parameters.rescale",
            "mergelab's della always rescales the surviving entries (by 1 / their keep probability)",
        )
        if combine == "ties":
            _require(
                shared["normalize"],
                "parameters.normalize",
                "mergelab's della (combine: ties) takes the disjoint mean of the agreeing entries "
                "(normalize: true)",
            )
        return {
            "density": _common(models, "density", "della"),
            "epsilon": _common(models, "epsilon", "della"),
            "scale": shared["lambda"],
            "combine": combine,
            "seed": 0,
            "weights": _weights(models, shared["normalize"] and combine == "linear"),
        }

    return hparams


def _linear(shared, models) -> dict[str, Any]:
    _require(
        shared["normalize"],
        "parameters.normalize",
        "mergelab's average divides by the sum of the weights (normalize: true); an unnormalized sum "
        "of whole models is not supported",
    )
    return {"weights": _weights(models, False)}


def _model_stock(shared, models) -> dict[str, Any]:
    _require(not shared["filter_wise"], "parameters.filter_wise", "mergelab's model_stock is per tensor")
    return {}


_TASK_VECTOR_SHARED = {"int8_mask": False, "normalize": False, "rescale": False, "lambda": 1.0}
_TASK_VECTOR_MODEL = {"weight": REQUIRED, "density": 1.0}


def _task_vector_method(mergelab: str, hparams, normalize: bool, rescale: bool, **extra: float) -> MethodSpec:
    shared = {**_TASK_VECTOR_SHARED, "normalize": normalize, "rescale": rescale}
    return MethodSpec(mergelab, shared, {**_TASK_VECTOR_MODEL, **extra}, hparams)


# mergekit 0.1.5's methods that mergelab computes, with mergekit's parameter defaults.
METHOD_SPECS: dict[str, MethodSpec] = {
    "linear": MethodSpec("average", {"normalize": True}, {"weight": REQUIRED}, _linear, base="ignored"),
    "task_arithmetic": _task_vector_method("task_arithmetic", _task_arithmetic, False, False),
    "ties": _task_vector_method("ties", _ties, True, False),
    "dare_ties": _task_vector_method("dare", _dare("ties"), False, True),
    "dare_linear": _task_vector_method("dare", _dare("linear"), False, True),
    "breadcrumbs": _task_vector_method("breadcrumbs", _breadcrumbs("linear"), False, False, gamma=0.01),
    "breadcrumbs_ties": _task_vector_method("breadcrumbs", _breadcrumbs("ties"), False, False, gamma=0.01),
    "della": _task_vector_method("della", _della("ties"), True, True, epsilon=0.15),
    "della_linear": _task_vector_method("della", _della("linear"), False, True, epsilon=0.15),
    "slerp": MethodSpec("slerp", {"t": REQUIRED}, {}, lambda shared, models: {"t": shared["t"]}, "endpoint"),
    "model_stock": MethodSpec("model_stock", {"filter_wise": False}, {}, _model_stock),
}
BOOL_PARAMETERS = frozenset({"int8_mask", "normalize", "rescale", "filter_wise"})


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """A parameter's value for one tensor, as mergekit resolves it: a scalar as is; a list of numbers
    interpolated linearly at `t` in [0, 1]; a list of other scalars indexed at `t`; `{filter, value}`
    conditions: the first whose filter is absent, `*` or a substring of the name. None when none matches."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if all(not isinstance(item, (Mapping, list)) for item in setting):
        numbers = [_number(item) for item in setting]
        if any(number is None for number in numbers):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(numbers) - 1)
        low = int(scaled)
        high = min(len(numbers) - 1, low + 1)
        fraction = scaled - low
        return (1 - fraction) * numbers[low] + fraction * numbers[high]
    for condition in setting:
        if (
            not isinstance(condition, Mapping)
            or "value" not in condition
            or set(condition) - {"filter", "value"}
        ):
            raise MergekitConfigError(
                f"a conditional parameter must be a list of {{filter, value}} entries, got {condition!r}"
            )
        pattern = condition.get("filter")
        if pattern is None or pattern == "*" or pattern in tensor_name:
            return evaluate_setting(condition["value"], tensor_name, t)
    return None


def _number(value: Any) -> float | None:
    """`value` as a number (YAML leaves `1e-3` a string; mergekit reads it as a number), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _typed(name: str, value: Any, where: str) -> Any:
    if name in BOOL_PARAMETERS:
        if not isinstance(value, bool):
            raise MergekitConfigError(f"{where}.{name}: must be true or false, got {value!r}")
        return value
    number = _number(value)
    if number is None:
        raise MergekitConfigError(f"{where}.{name}: must be a number, got {value!r}")
    return number


@dataclass(frozen=True)
class _Model:
    reference: str
    parameters: Mapping[str, Any]
    where: str


def _model_reference(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MergekitConfigError(f"{where}: a model must be a path or hub id string, got {value!r}")
    return value


def _expert_reference(model: _Model, base: str) -> str:
    """The expert mergelab merges for a model: mergekit's `MODEL+LORA` (the adapter applied to MODEL) is the
    adapter directory as an expert over the base, which must be MODEL."""
    if "+" not in model.reference:
        return model.reference
    target, adapter = model.reference.split("+", 1)
    if target != base:
        raise MergekitConfigError(
            f"{model.where}.model: '{model.reference}': a LoRA adapter merges over the base model ({base}), "
            f"not over {target}"
        )
    return adapter


def _parameters(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MergekitConfigError(f"{where}: must be a mapping of parameter names to settings")
    return value


def _models(config: Mapping[str, Any]) -> tuple[list[_Model], Mapping[str, Any], list[tuple[int, int]]]:
    """The input models, the slice-level parameters, and each model's `layer_range` (slices only)."""
    if ("models" in config) == ("slices" in config):
        raise MergekitConfigError("give exactly one of 'models' or 'slices'")
    if "models" in config:
        entries, slice_parameters, ranges = config["models"], {}, []
        key = "models"
    else:
        slices = config["slices"]
        if not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], Mapping):
            raise MergekitConfigError(
                "slices: mergelab merges whole models; several slices (a frankenmerge) are not supported"
            )
        unknown = set(slices[0]) - {"sources", "parameters"}
        if unknown:
            raise MergekitConfigError(f"slices[0].{sorted(unknown)[0]}: not supported by mergelab")
        entries = slices[0].get("sources")
        slice_parameters = _parameters(slices[0].get("parameters"), "slices[0].parameters")
        key = "slices[0].sources"
        ranges = []
    if not isinstance(entries, list) or not entries:
        raise MergekitConfigError(f"{key}: must be a non-empty list of models")
    models = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise MergekitConfigError(f"{where}: each entry needs a 'model'")
        allowed = {"model", "parameters"} | ({"layer_range"} if key != "models" else set())
        unknown = set(entry) - allowed
        if unknown:
            raise MergekitConfigError(f"{where}.{sorted(unknown)[0]}: not supported by mergelab")
        if key != "models":
            layer_range = entry.get("layer_range")
            if not (isinstance(layer_range, list) and len(layer_range) == 2):
                raise MergekitConfigError(f"{where}.layer_range: must be [start, end]")
            ranges.append((int(layer_range[0]), int(layer_range[1])))
        models.append(
            _Model(
                _model_reference(entry["model"], f"{where}.model"),
                _parameters(entry.get("parameters"), f"{where}.parameters"),
                where,
            )
        )
    return models, slice_parameters, ranges


def load_config(path: str | Path) -> dict[str, Any]:
    """The YAML document at `path`, with mergekit keys mergelab does not support refused by name."""
    import yaml

    text = Path(path).read_text()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise MergekitConfigError(f"not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(config, Mapping):
        raise MergekitConfigError("a mergekit configuration is a YAML mapping")
    unknown = sorted(set(config) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise MergekitConfigError(
            f"{unknown[0]}: not a mergekit configuration key; known: {', '.join(TOP_LEVEL_KEYS)}"
        )
    if config.get("modules") is not None:
        raise MergekitConfigError(
            "modules: per-module merges (multimodal models) are not supported by mergelab"
        )
    if config.get("tokenizer") is not None:
        raise MergekitConfigError(
            "tokenizer: building a tokenizer is not supported; mergelab copies the base's"
        )
    if config.get("chat_template") is not None:
        raise MergekitConfigError("chat_template: not supported; mergelab copies the base's tokenizer files")
    method = config.get("merge_method")
    if method not in METHOD_SPECS:
        supported = ", ".join(METHOD_SPECS)
        raise MergekitConfigError(
            f"merge_method: {method!r} is not supported by mergelab; supported: {supported}"
        )
    if METHOD_SPECS[method].mergelab not in METHODS:
        raise MergekitConfigError(
            f"merge_method: {method!r} needs mergelab's '{METHOD_SPECS[method].mergelab}' method, which this "
            "version does not have"
        )
    return dict(config)


def plan(config: Mapping[str, Any]) -> MergekitPlan:
    """The mergelab merge that computes what the mergekit configuration `config` asks for."""
    method_name = config["merge_method"]
    spec = METHOD_SPECS[method_name]
    models, slice_parameters, ranges = _models(config)
    global_parameters = _parameters(config.get("parameters"), "parameters")
    base_model = config.get("base_model")
    if base_model is not None:
        base_model = _model_reference(base_model, "base_model")
    notes: list[str] = []
    _check_parameter_names(spec, method_name, models, slice_parameters, global_parameters)
    base, experts = _inputs(spec, method_name, models, base_model)
    if "+" in base:
        raise MergekitConfigError(f"base_model: '{base}': the base cannot be a model with a LoRA adapter")
    checkpoint = open_checkpoint(base, "base")
    try:
        infos = checkpoint.infos()
    finally:
        checkpoint.close()
    float_names = sorted(name for name, info in infos.items() if info.dtype.is_floating_point)
    n_layers = 1 + max(
        (int(match.group(1)) for name in float_names if (match := LAYER_INDEX.search(name))), default=-1
    )
    for start, end in ranges:
        if (start, end) != (0, n_layers):
            raise MergekitConfigError(
                f"slices[0].sources: layer_range [{start}, {end}] is not the whole model [0, {n_layers}]; "
                "mergelab merges whole models (no frankenmerges)"
            )
    per_tensor: dict[str, dict[str, Any]] = {}
    for name in float_names:
        match = LAYER_INDEX.search(name)
        t = 0.0 if match is None else (int(match.group(1)) / (n_layers - 1) if n_layers > 1 else 1.0)
        shared = {
            key: _resolve(key, default, [slice_parameters, global_parameters], name, t, "parameters")
            for key, default in spec.shared.items()
        }
        per_model = [
            {
                key: _resolve(
                    key,
                    default,
                    [model.parameters, slice_parameters, global_parameters],
                    name,
                    t,
                    model.where,
                )
                for key, default in spec.per_model.items()
            }
            for model in experts
        ]
        if shared.get("int8_mask"):
            notes.append(
                "parameters.int8_mask: ignored (mergelab's masks are boolean; results do not change)"
            )
        if method_name == "task_arithmetic" and any(model["density"] != 1.0 for model in per_model):
            notes.append("density: unused by task_arithmetic (as in mergekit), which does not sparsify")
        per_tensor[name] = spec.hparams(shared, per_model)
    hparams, tensor_hparams = _split_shared(per_tensor)
    expert_references = tuple(_expert_reference(model, base) for model in experts)
    options, output_notes = _output_options(config, infos, base, [model.reference for model in experts])
    return MergekitPlan(
        base=base,
        experts=expert_references,
        method=spec.mergelab,
        hparams=hparams,
        tensor_hparams=tensor_hparams,
        options=options,
        notes=tuple(dict.fromkeys(output_notes + notes)),
    )


def _check_parameter_names(spec, method_name, models, slice_parameters, global_parameters) -> None:
    """Unknown parameter names, and parameters of the whole merge given per model, are errors naming the key."""
    known = set(spec.shared) | set(spec.per_model)
    scopes = [("parameters", global_parameters, known), ("slices[0].parameters", slice_parameters, known)]
    scopes += [(f"{model.where}.parameters", model.parameters, set(spec.per_model)) for model in models]
    for where, parameters, allowed in scopes:
        for name in parameters:
            if name in spec.shared and name not in allowed:
                raise MergekitConfigError(
                    f"{where}.{name}: '{name}' applies to the whole merge; set it under the top-level parameters"
                )
            if name not in allowed:
                raise MergekitConfigError(
                    f"{where}.{name}: mergekit's '{method_name}' has no parameter '{name}'; known: {sorted(known)}"
                )


def _inputs(
    spec: MethodSpec, method_name: str, models: list[_Model], base_model: str | None
) -> tuple[str, list[_Model]]:
    """The mergelab base and experts: task-vector methods merge every model but the base into it; linear
    averages every listed model and, as mergekit, a `base_model` not listed (with the top-level weight);
    slerp interpolates from `base_model` (t = 0) to the other model."""
    references = [model.reference for model in models]
    if len(set(references)) != len(references):
        raise MergekitConfigError("models: a model is listed twice")
    if spec.base == "ignored":
        if base_model is None or base_model in references:
            return (base_model or references[0]), models
        return base_model, [*models, _Model(base_model, {}, "base_model")]
    if base_model is None:
        raise MergekitConfigError(f"base_model: mergekit's '{method_name}' needs a base_model")
    others = [model for model in models if model.reference != base_model]
    if spec.base == "endpoint":
        if len(others) != 1:
            raise MergekitConfigError(
                f"models: slerp interpolates base_model and exactly one other model, got {len(others)} others"
            )
        base_entry = next((model for model in models if model.reference == base_model), None)
        return base_model, [base_entry or _Model(base_model, {}, "base_model"), others[0]]
    if not others:
        raise MergekitConfigError("models: there is no model to merge besides base_model")
    return base_model, others


def _resolve(
    name: str, default: Any, scopes: list[Mapping[str, Any]], tensor: str, t: float, where: str
) -> Any:
    """A parameter's value for one tensor: the first scope whose setting matches, else the default."""
    for scope in scopes:
        if name in scope:
            value = evaluate_setting(scope[name], tensor, t)
            if value is not None:
                return _typed(name, value, where)
    if default is REQUIRED:
        raise MergekitConfigError(f"{where}: missing required parameter '{name}' for tensor '{tensor}'")
    return default


def _output_options(
    config: Mapping[str, Any], infos, base: str, models: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """`mergelab.merge` options for mergekit's `out_dtype` (else `dtype`: mergekit writes what it computed
    in) and `tokenizer_source`, and the notes to print."""
    for key in ("dtype", "out_dtype"):
        value = config.get(key)
        if value is not None and value not in DTYPES:
            raise MergekitConfigError(f"{key}: {value!r} is not one of {', '.join(DTYPES)}")
    options: dict[str, Any] = {}
    notes = []
    base_dtype = next((info.dtype for info in infos.values() if info.dtype.is_floating_point), torch.float32)
    requested = config.get("out_dtype") or config.get("dtype")
    if requested is not None and DTYPES[requested] != base_dtype:
        options["out_dtype"] = str(DTYPES[requested]).removeprefix("torch.")
    if config.get("dtype") is not None:
        notes.append(
            "dtype: mergelab computes in float32 (mergekit in dtype) and writes out_dtype, else dtype"
        )
    source = config.get("tokenizer_source")
    if source == "union":
        options["tokenizer_source"] = "union"
    elif source not in (None, "base", base):
        if source not in models:
            raise MergekitConfigError(
                f"tokenizer_source: {source!r} is neither base_model nor one of the models"
            )
        options["tokenizer_source"] = f"expert:{list(models).index(source)}"
    return options, notes


def _split_shared(
    per_tensor: Mapping[str, dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The most common hyperparameters (shared) and, per tensor that differs, only the keys that differ."""
    if not per_tensor:
        return {}, {}
    counts = Counter(json.dumps(hparams, sort_keys=True) for hparams in per_tensor.values())
    shared = json.loads(counts.most_common(1)[0][0])
    tensor_hparams = {}
    for name, hparams in per_tensor.items():
        differing = {key: value for key, value in hparams.items() if _plain(value) != shared[key]}
        if differing:
            tensor_hparams[name] = {key: _plain(value) for key, value in differing.items()}
    return {key: _plain(value) for key, value in shared.items()}, tensor_hparams


def _plain(value: Any) -> Any:
    """JSON-shaped values (tuples as lists), so shared and per-tensor values compare alike."""
    return json.loads(json.dumps(value))


def read_mergekit_config(path: str | Path) -> MergekitPlan:
    """The mergelab merge for the mergekit YAML file at `path` (its base checkpoint is opened to resolve
    per-tensor settings)."""
    try:
        return plan(load_config(path))
    except MergekitConfigError as error:
        raise MergekitConfigError(f"{path}: {error}") from None


def merge_from_yaml(path: str | Path, out: str | Path | None = None, **options: Any):
    """Merge as the mergekit YAML file at `path` says; `options` are `mergelab.merge`'s run options
    (`device`, `overwrite`, `max_shard_size`, `progress`). Returns what `mergelab.merge` returns."""
    from mergelab.api.merging import merge

    merge_plan = read_mergekit_config(path)
    for note in merge_plan.notes:
        print(f"mergelab: note: {note}", file=sys.stderr)
    return merge(out=out, **merge_plan.merge_arguments(), **options)
