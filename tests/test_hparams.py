"""One validation pass: every hyperparameter's type is checked from its method's `Params` annotations before
any work, in the Python API and the CLI, with a one-line error naming method, option and value (issue 16.5)."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_type_hints

import pytest
import torch
from safetensors.torch import save_file

from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.methods import METHODS, MergeConfigError, get_method
from mergelab.methods.hparams import checked_hparams


@pytest.fixture
def checkpoints(tmp_path):
    save_file({"a": torch.zeros(2, 2)}, tmp_path / "base.safetensors")
    save_file({"a": torch.ones(2, 2)}, tmp_path / "e.safetensors")
    return tmp_path


@pytest.mark.parametrize(
    ("method", "hparams", "message"),
    [
        (
            "ties",
            {"density": "0.5"},
            "method 'ties': density='0.5' must be a finite number or a list of numbers",
        ),
        (
            "task_arithmetic",
            {"scale": None},
            "method 'task_arithmetic': scale=None must be a finite number",
        ),
        (
            "ties",
            {"weights": 1.0},
            "method 'ties': weights=1.0 must be a list of numbers or null",
        ),
        ("regmean", {"alpha": "x"}, "method 'regmean': alpha='x' must be a finite number"),
        (
            "ties",
            {"density": True},
            "method 'ties': density=True must be a finite number or a list of numbers",
        ),
        ("dare", {"seed": "abc"}, "method 'dare': seed='abc' must be an integer"),
        (
            "fisher",
            {"n_examples": 10.5},
            "method 'fisher': n_examples=10.5 must be an integer",
        ),
        ("ties", {"elect": "yes"}, "method 'ties': elect='yes' must be true or false"),
        ("ties", {"trim_scope": 1}, "method 'ties': trim_scope=1 must be a string"),
    ],
)
def test_wrongly_typed_hyperparameters_in_python(checkpoints, method, hparams, message):
    with pytest.raises(MergeConfigError) as error:
        merge(
            checkpoints / "base.safetensors",
            [checkpoints / "e.safetensors"],
            method,
            progress=False,
            **hparams,
        )
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("merge.density=abc", "method 'ties': density='abc' must be a finite number or a list of numbers"),
        ("merge.scale=abc", "method 'ties': scale='abc' must be a finite number"),
        ("merge.weights=[1,x]", "method 'ties': weights=[1, 'x'] must be a list of numbers"),
        ("merge.density=true", "method 'ties': density=True must be a finite number or a list of numbers"),
        ("max_shard_size=-5", "max_shard_size=-5 must be at least 1 byte"),
        ("max_shard_size=true", "max_shard_size=True must be a byte count or a size like 5GB"),
    ],
)
def test_wrongly_typed_options_on_the_command_line(checkpoints, capsys, override, message):
    out = checkpoints / "out"
    base, expert = checkpoints / "base.safetensors", checkpoints / "e.safetensors"
    code = cli(["merge", f"base={base}", f"experts=[{expert}]", f"out={out}", "progress=false", override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_values_are_converted_to_their_annotated_types():
    params = get_method("ties", density=1, scale=2, weights=[1, 2]).params
    assert params.density == 1 and params.weights == (1, 2) and isinstance(params.weights, tuple)
    assert get_method("pleas", budget=[1, 1.5]).params.budget == (1, 1.5)


def test_literal_fields_take_only_their_choices():
    @dataclasses.dataclass(frozen=True)
    class Params:
        mode: Literal["a", "b"] = "a"

    assert checked_hparams("m", Params, {"mode": "b"}) == {"mode": "b"}
    with pytest.raises(MergeConfigError, match="method 'm': mode='c' must be one of 'a', 'b'"):
        checked_hparams("m", Params, {"mode": "c"})


def _wrong_values(annotation) -> list:
    """Values that no field of this annotation may take."""
    if annotation is float:
        return ["abc", True, None, float("nan")]
    if annotation is int:
        return ["abc", True, 1.5, None]
    if annotation is bool:
        return ["true", 1, None]
    if annotation is str:
        return [1, None, ["x"]]
    return ["abc", True]  # unions of numbers and lists, Literals


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_checks_every_field(name):
    """Generic: any method, also ones added later, refuses a wrongly typed value for each of its fields."""
    method = METHODS[name]
    for field, annotation in get_type_hints(method.Params).items():
        for value in _wrong_values(annotation):
            with pytest.raises(MergeConfigError) as error:
                get_method(name, **{field: value})
            assert f"method '{name}': {field}={value!r}" in str(error.value)
