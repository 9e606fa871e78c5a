"""Legal but suspicious input gets a warning line; inputs that fail deep inside libraries get a clear error."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.engine.checkpoint import CheckpointError
from mergelab.methods import MergeWarning


@pytest.fixture
def files(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "base.safetensors")
    save_file({"a": torch.ones(2)}, tmp_path / "e.safetensors")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "e.safetensors")
    return tmp_path


def test_the_same_expert_twice_warns(files):
    with pytest.warns(MergeWarning, match=r"expert 1 \(.*link.safetensors\) is expert 0 again"):
        merge(
            files / "base.safetensors",
            [files / "e.safetensors", files / "link.safetensors"],
            "average",
            progress=False,
        )


def test_an_expert_that_is_the_base_warns(files):
    with pytest.warns(MergeWarning, match=r"expert 0 \(.*base.safetensors\) is the base itself"):
        merge(files / "base.safetensors", [files / "base.safetensors"], "task_arithmetic", progress=False)
    with warnings.catch_warnings():  # average ignores the base's values: the base may be averaged too
        warnings.simplefilter("error", MergeWarning)
        merge(files / "base.safetensors", [files / "base.safetensors"], "average", progress=False)
    state = {"a": torch.ones(2)}
    with pytest.warns(MergeWarning, match=r"expert 1 \(state dict\) is expert 0 again"):
        merge({"a": torch.zeros(2)}, [state, state], "average", progress=False)


def test_distinct_experts_do_not_warn(files):
    save_file({"a": torch.ones(2) * 2}, files / "f.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MergeWarning)
        merge(
            files / "base.safetensors",
            [files / "e.safetensors", files / "f.safetensors"],
            "average",
            progress=False,
        )


@pytest.mark.parametrize("key", ["base", "experts"])
def test_unquoted_non_ascii_paths_get_a_hint_to_quote(files, capsys, key):
    odd = files / "modèle"
    values = {"base": str(files / "base.safetensors"), "experts": f"[{files / 'e.safetensors'}]"}
    values[key] = str(odd) if key == "base" else f"[{odd}]"
    code = cli(["merge", f"base={values['base']}", f"experts={values['experts']}", f"out={files / 'o'}"])
    err = capsys.readouterr().err
    assert code == 2 and "unquoted values may hold only ASCII characters; quote the value" in err
    quoted = f'base="{odd}"' if key == "base" else f'experts=["{odd}"]'
    assert quoted in err


def test_pleas_with_a_base_without_tokenizer_is_a_clear_error(llama_family):
    # the tiny Llama family is saved without tokenizer files
    with pytest.raises(
        CheckpointError, match=r"base .*: no tokenizer could be loaded .*method 'pleas' tokenizes"
    ):
        merge(llama_family["base"], llama_family["experts"][2:], "pleas", data=["zoo:color"], progress=False)
