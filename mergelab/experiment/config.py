"""Typed view of the composed `mergelab run` config, validated before any model is loaded.

Hydra composes `conf/config.yaml`; `validate` turns the result into frozen dataclasses and fails at once,
with one line naming the key and the allowed values, on an unknown key, a wrong type or a bad value. It
also resolves which experts a run merges (the `n_experts` subset drawn with `subset_seed`), so the config
hash that identifies a run for resume depends on the experts actually used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from mergelab.experiment import run_checks
from mergelab.experiment.errors import ConfigError

HASH_VERSION = 1  # bump when the meaning of a run's config changes, so old fragments are not reused


@dataclass(frozen=True)
class ModelConfig:
    """The base model: a zoo size, or a hub id / local directory (`source: hub`)."""

    source: Literal["zoo", "hub"]
    name: str
    size: str | None
    path: str | None
    arch: Literal["causal_lm", "seq2seq_lm"]


@dataclass(frozen=True)
class ExpertsConfig:
    """Which experts are merged: `n_experts` of the available categories, drawn with `subset_seed`.

    `init: different` takes the zoo experts alternately (in category order) from the base of init 0 and
    from the independently initialized base of init 1 (`mergelab zoo build init=1`); `shared`: all from init 0.
    `replicate` r > 0 takes every zoo expert from its r-th independent fine-tuning run instead (the same
    base, another seed; `mergelab zoo build replicate=r`), so that studies can average over expert sets.
    """

    source: Literal["zoo", "paths"]
    base_kind: Literal["base", "it"]
    init: Literal["shared", "different"]
    n_experts: int
    subset_seed: int
    replicate: int
    categories: list[str] | None
    paths: dict[str, str] | None
    multitask: str | None


@dataclass(frozen=True)
class EvalConfig:
    """What a run evaluates: `suite` zoo (the embedded synthetic tasks) or t0 (the real T0 mixture, read
    from the hub or from `data_dir`, see `mergelab.eval.suites.t0`), which groups, on which split and how."""

    held_in: bool
    held_out: bool
    split: Literal["train", "validation", "test"]
    max_examples: int | None
    batch_size: int
    length_normalize: bool
    multitask_reference: bool
    suite: Literal["zoo", "t0"]
    data_dir: str | None


@dataclass(frozen=True)
class LoggerConfig:
    name: Literal["wandb", "none"]
    project: str
    mode: Literal["offline", "online", "disabled"]
    dir: str | None


@dataclass(frozen=True)
class ReportConfig:
    """A study's own reporting: `extension` names a function as `module:function`, which `mergelab report`
    calls as `function(rows, summary, out_dir, **options)` after the common tables and figures, and which
    returns the paths it wrote; None: the common report only."""

    extension: str | None
    options: dict[str, Any]


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; `merge` holds the method name plus its hyperparameters."""

    model: ModelConfig
    experts: ExpertsConfig
    merge: dict[str, Any]
    eval: EvalConfig
    logger: LoggerConfig
    study: str
    results_dir: str
    device: str
    save_merged: bool
    force: bool
    progress: bool
    allow_nonfinite: bool  # merge inputs with NaN/inf anyway; a non-finite merged model is still not recorded
    select: Literal["none", "validation"]
    select_subset_seed: int | None  # search on this seed's expert subset (None: the run's own subset)
    select_replicate: int | None  # search on this expert replicate (None: the run's own replicate)
    select_grid: dict[str, dict[str, list[float]]]
    report: ReportConfig


@dataclass(frozen=True)
class RunSpec:
    """A validated run: the typed config, the experts' categories in suite order and the config hash."""

    config: RunConfig
    method: str
    hparams: dict[str, Any]
    categories: list[str]
    config_hash: str

    @property
    def run_id(self) -> str:
        return f"{self.config.study}-{self.config_hash[:12]}"


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """`value` converted to `annotation`'s type, or a ConfigError naming `key`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _check_value(key, value, inner)
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, f"{key}.")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_value(f"{key}[{index}]", item, args[0]) for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _check_value(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from a mapping, rejecting unknown and missing keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    allowed = [field.name for field in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            raise ConfigError(f"unknown key '{prefix}{key}'; allowed keys: {', '.join(allowed)}")
    missing = [name for name in allowed if name not in data]
    if missing:
        raise ConfigError(f"missing key '{prefix}{missing[0]}'")
    return cls(**{name: _check_value(f"{prefix}{name}", data[name], hints[name]) for name in allowed})


def _plain(config: Any) -> dict[str, Any]:
    """A resolved plain dict from a DictConfig (without the `hydra` node) or a mapping."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        plain = OmegaConf.to_container(config, resolve=True)
    else:
        plain = dict(config)
    plain.pop("hydra", None)
    return plain


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"device: {device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N, mps")


def _check_report_extension(settings: ReportConfig) -> None:
    if settings.extension is None:
        return
    module_name, _, function = settings.extension.partition(":")
    if not module_name or not function:
        raise ConfigError(f"report.extension: {settings.extension!r} is not of the form 'module:function'")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"report.extension: cannot import {module_name!r}: {error}") from error
    if not callable(getattr(module, function, None)):
        raise ConfigError(f"report.extension: {module_name!r} has no function {function!r}")


def _check_method(method: str, hparams: Mapping[str, Any], key: str = "merge") -> None:
    from mergelab.methods import METHODS, MergeConfigError, get_method

    if method not in METHODS:
        raise ConfigError(f"{key}.method: {method!r} is not allowed; allowed: {', '.join(sorted(METHODS))}")
    try:
        get_method(method, **hparams)
    except MergeConfigError as error:
        raise ConfigError(f"{key}: {error}") from None


def available_categories(config: RunConfig) -> list[str]:
    """The held-in categories that have an expert: the zoo's eight, or the keys of `experts.paths`
    (which, with the t0 suite, must be T0 held-in categories)."""
    if config.experts.source == "paths":
        categories = list(config.experts.paths or {})
        if config.eval.suite == "t0":
            from mergelab.eval.suites import t0

            allowed = t0.load_suite().held_in_categories
            unknown = [name for name in categories if name not in allowed]
            if unknown:
                raise ConfigError(
                    f"experts.paths.{unknown[0]}: not a T0 held-in category; allowed: {', '.join(allowed)}"
                )
        return categories
    from mergelab import zoo

    return zoo.load_suite().held_in_categories


def choose_categories(config: RunConfig) -> list[str]:
    """The merged experts' categories, in the order of `available_categories`."""
    experts, available = config.experts, available_categories(config)
    if experts.categories is not None:
        unknown = [name for name in experts.categories if name not in available]
        if unknown:
            raise ConfigError(
                f"experts.categories: {unknown[0]!r} is not allowed; allowed: {', '.join(available)}"
            )
        if len(experts.categories) != experts.n_experts:
            raise ConfigError(
                f"experts.n_experts: {experts.n_experts} does not match experts.categories "
                f"({len(experts.categories)} names)"
            )
        return [name for name in available if name in experts.categories]
    if not 1 <= experts.n_experts <= len(available):
        raise ConfigError(
            f"experts.n_experts: {experts.n_experts} is not allowed; allowed: 1..{len(available)}"
        )
    chosen = random.Random(experts.subset_seed).sample(available, experts.n_experts)
    return [name for name in available if name in chosen]


def selection_points(config: RunConfig, method: str, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The hyperparameter grid searched with `select=validation` (each point a full hparams dict)."""
    import itertools

    grid = config.select_grid.get(method, {})
    names = list(grid)
    return [
        {**hparams, **dict(zip(names, values))} for values in itertools.product(*(grid[n] for n in names))
    ]


def config_hash(config: RunConfig, categories: list[str]) -> str:
    """SHA-256 of what determines a run's numbers (not the logger, paths of outputs, device or force)."""
    experts = dataclasses.asdict(config.experts)
    experts["categories"] = categories
    if experts["init"] == "shared":
        del experts["init"]  # the default before `init` existed: earlier runs keep their hashes
    if experts["replicate"] == 0:
        del experts["replicate"]  # likewise for the default expert replicate
    if config.experts.categories is not None or len(categories) == len(available_categories(config)):
        experts["subset_seed"] = None  # the seed chose nothing: every seed names the same run
    if experts["paths"]:
        experts["paths"] = {name: experts["paths"][name] for name in categories}
    evaluation = dataclasses.asdict(config.eval)
    if evaluation["suite"] == "zoo":
        del evaluation["suite"], evaluation["data_dir"]  # the zoo suite's hashes predate these keys
    else:
        from mergelab.eval.suites import t0

        evaluation["suite_version"] = t0.SUITE_VERSION
        evaluation["data_dir"] = t0.data_dir(config.eval.data_dir)  # fixture data is not hub data
    identity = {
        "version": HASH_VERSION,
        "model": dataclasses.asdict(config.model),
        "experts": experts,
        "merge": config.merge,
        "eval": evaluation,
        "select": config.select,
        "select_grid": config.select_grid.get(config.merge["method"])
        if config.select == "validation"
        else None,
    }
    if config.select == "validation" and config.select_subset_seed is not None:
        identity["select_subset_seed"] = config.select_subset_seed  # absent otherwise: older hashes hold
    if config.select == "validation" and config.select_replicate is not None:
        identity["select_replicate"] = config.select_replicate
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def validate(composed: Any) -> RunSpec:
    """Check a composed config and resolve its experts; raises ConfigError with a one-line message."""
    plain = _plain(composed)
    config: RunConfig = build_dataclass(RunConfig, plain)
    _check_device(config.device)
    run_checks.check_study(config.study)
    run_checks.check_results_dir(config.results_dir)
    run_checks.check_eval_limits(config.eval.max_examples, config.eval.batch_size)
    run_checks.check_unique_categories(config.experts.categories)
    _check_report_extension(config.report)
    merge = dict(config.merge)
    method = merge.pop("method", None)
    if method is None:
        raise ConfigError("missing key 'merge.method'")
    _check_method(method, merge)
    if config.model.arch != "causal_lm" and config.eval.suite != "t0":
        raise ConfigError(
            f"model.arch: {config.model.arch!r} is evaluated only on the T0 suite (eval=t0); "
            "the zoo suite's tasks are for the zoo's causal LMs"
        )
    if config.model.source == "zoo":
        from mergelab import zoo

        if config.model.size not in zoo.SIZES:
            raise ConfigError(
                f"model.size: {config.model.size!r} is not allowed; allowed: {', '.join(zoo.SIZES)}"
            )
        if config.experts.source != "zoo":
            raise ConfigError("experts.source: 'paths' is not allowed with a zoo model; allowed: zoo")
        if config.eval.suite != "zoo":
            raise ConfigError(
                f"eval.suite: {config.eval.suite!r} is not allowed with a zoo model (its tokenizer knows "
                "only the zoo's words); allowed: zoo"
            )
        if config.experts.init == "different" and config.experts.base_kind != "base":
            raise ConfigError(
                "experts.init: 'different' needs experts.base_kind=base (the second zoo init has no it base)"
            )
        for key, replicate in (
            ("experts.replicate", config.experts.replicate),
            ("select_replicate", config.select_replicate),
        ):
            if replicate is not None and replicate not in zoo.REPLICATES:
                raise ConfigError(
                    f"{key}: {replicate!r} is not allowed; allowed: {', '.join(map(str, zoo.REPLICATES))}"
                )
        if config.experts.replicate and config.experts.init != "shared":
            raise ConfigError(
                "experts.replicate: replicates are fine-tuned from the init-0 base; allowed with "
                "experts.init=different: 0"
            )
    else:
        if not config.model.path:
            raise ConfigError(f"model.path: required for the hub preset {config.model.name!r}")
        if config.experts.source != "paths":
            raise ConfigError("experts.source: 'zoo' is not allowed with a hub model; allowed: paths")
        if config.experts.init != "shared":
            raise ConfigError("experts.init: 'different' is for zoo experts; allowed with paths: shared")
        if config.experts.replicate:
            raise ConfigError("experts.replicate: replicates are zoo experts; allowed with paths: 0")
    if not (config.eval.held_in or config.eval.held_out):
        raise ConfigError("eval: held_in and held_out are both false; allowed: at least one true")
    for name, grid in config.select_grid.items():
        for parameter in grid:
            _check_method(
                name, {parameter: grid[parameter][0]} if grid[parameter] else {}, "select_grid." + name
            )
    if config.select == "validation":
        if not config.eval.held_in:
            raise ConfigError("select: 'validation' needs eval.held_in=true (it maximizes the held-in score)")
        if method not in config.select_grid:
            raise ConfigError(
                f"select_grid: no grid for method '{method}' (select=validation searches "
                f"select_grid.{method}); give one, e.g. +select_grid.{method}.scale=[0.5,1.0], or use "
                f"select=none; methods with a grid: {', '.join(sorted(config.select_grid))}"
            )
        for point in selection_points(config, method, merge):
            _check_method(method, point, f"select_grid.{method}")
    categories = choose_categories(config)
    run_checks.check_expert_weights(method, merge, len(categories))
    return RunSpec(config, method, merge, categories, config_hash(config, categories))
