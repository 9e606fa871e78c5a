"""Maps method names to their classes.

Tensor methods live in this package and are registered directly. Whole-model methods (PLeaS) live in a
higher layer (they run models and need the engine), so the registry names the module that defines each
one and imports it only when the method is looked up: `mergelab.methods` never imports upward.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mergelab.methods.average import Average
from mergelab.methods.base import MergeConfigError, MergeMethod
from mergelab.methods.breadcrumbs import Breadcrumbs
from mergelab.methods.dare import Dare
from mergelab.methods.della import Della
from mergelab.methods.fisher import Fisher
from mergelab.methods.iso_c import IsoC
from mergelab.methods.model_stock import ModelStock
from mergelab.methods.regmean import RegMean
from mergelab.methods.slerp import Slerp
from mergelab.methods.task_arithmetic import TaskArithmetic
from mergelab.methods.ties import Ties
from mergelab.methods.tsv import Tsv

TENSOR_METHODS: tuple[type[MergeMethod], ...] = (
    Average,
    TaskArithmetic,
    Ties,
    Dare,
    Fisher,
    RegMean,
    Slerp,
    Breadcrumbs,
    Della,
    ModelStock,
    Tsv,
    IsoC,
)
# name -> "module:class" of a whole-model method, imported on first lookup
WHOLE_MODEL_METHODS: dict[str, str] = {"pleas": "mergelab.pleas.method:Pleas"}


class MethodRegistry(Mapping[str, type[MergeMethod]]):
    """Every method by name, in registration order; whole-model methods are imported when first used."""

    def __init__(self, tensor_methods: tuple[type[MergeMethod], ...], whole_model: Mapping[str, str]) -> None:
        self._classes: dict[str, type[MergeMethod] | None] = {
            method.name: method for method in tensor_methods
        }
        self._locations = dict(whole_model)
        self._classes.update(dict.fromkeys(whole_model))

    def __getitem__(self, name: str) -> type[MergeMethod]:
        method = self._classes[name]
        if method is None:
            module_name, class_name = self._locations[name].split(":")
            method = getattr(importlib.import_module(module_name), class_name)
            self._classes[name] = method
        return method

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


METHODS = MethodRegistry(TENSOR_METHODS, WHOLE_MODEL_METHODS)


@dataclass(frozen=True)
class MethodAlias:
    """Another project's name for a mergelab method with some hyperparameters fixed (mergekit's names)."""

    method: str
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return " ".join([self.method, *(f"{key}={value}" for key, value in self.fixed.items())])


# mergekit's `task_arithmetic` and `ties` already have mergelab's names (see the README for the differences).
ALIASES: dict[str, MethodAlias] = {
    "linear": MethodAlias("average"),
    "dare_linear": MethodAlias("dare", {"combine": "linear"}),
    "dare_ties": MethodAlias("dare", {"combine": "ties"}),
}


def resolve_alias(name: str, hparams: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method name, hyperparameters) with an alias replaced by its method and fixed values.

    Giving an alias a different value for a hyperparameter it fixes (`dare_ties` with `combine=linear`) is
    an error rather than a silent choice of one of the two.
    """
    alias = ALIASES.get(name)
    if alias is None:
        return name, dict(hparams)
    for key, value in alias.fixed.items():
        if key in hparams and hparams[key] != value:
            raise MergeConfigError(
                f"method '{name}' is {alias.describe()}; it cannot take {key}={hparams[key]!r}"
            )
    return alias.method, {**hparams, **alias.fixed}


def get_method(name: str, **hparams: Any) -> MergeMethod:
    """Build the method `name` (or an alias) with validated hyperparameters; unknown names list the valid
    ones."""
    name, hparams = resolve_alias(name, hparams)
    if name not in METHODS:
        raise MergeConfigError(
            f"unknown merge method '{name}'; valid: {sorted(METHODS)} and mergekit's names {sorted(ALIASES)}"
        )
    return METHODS[name](**hparams)
