"""`mergelab merge`: help, Hydra composition of method options, no litter, clean errors from the console."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from mergelab.api.cli import compose_job
from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.methods import METHODS
from tests.conftest import state_dicts


def test_help_lists_every_method_with_its_defaults(capsys):
    assert cli(["merge", "--help"]) == 0
    text = capsys.readouterr().out
    assert "usage: mergelab merge merge=METHOD base=DIR 'experts=[A,B,...]' out=DIR" in text
    for name, method in METHODS.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        for field in dataclasses.fields(method.Params):
            assert f"{field.name}={field.default}" in line


@pytest.mark.parametrize("method", sorted(METHODS))
def test_group_files_hold_exactly_the_methods_hyperparameters(method):
    config = compose_job([f"merge={method}", "base=/b", "experts=[/e]", "out=/o"])
    fields = {field.name for field in dataclasses.fields(METHODS[method].Params)}
    assert config.merge.method == method
    assert set(config.merge) - {"method"} == fields


def test_job_keys_are_parsed_with_hydra_grammar():
    config = compose_job(
        ["base=/m/base", "experts=[/m/a,org/model]", "out=/m/out", "overwrite=true", "merge.density=0.5"]
    )
    assert list(config.experts) == ["/m/a", "org/model"] and config.overwrite is True
    assert config.merge.method == "ties" and config.merge.density == 0.5 and config.device == "auto"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["base=/b"], "missing required option(s): experts, out"),
        (
            ["base=/b", "experts=/a,/c", "out=/o"],
            "sweeps are not supported here; for a list write experts=[A,B]",
        ),
        (["base=/b", "experts=/a", "out=/o"], "experts must be a list"),
        (["+base=/b"], "write base=VALUE, without + or ~"),
        (["base=/b", "experts=[/a]", "out=/o", "overwrite=maybe"], "overwrite must be true, false or force"),
    ],
)
def test_bad_job_options_are_named(overrides, message, capsys):
    assert cli(["merge", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mergelab merge: error: ") and message in err and err.count("\n") == 1


def test_cli_passes_method_options_and_leaves_no_hydra_files(llama_family, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    experts = ",".join(str(path) for path in llama_family["experts"][:2])
    out = tmp_path / "merged"
    args = [f"base={llama_family['base']}", f"experts=[{experts}]", f"out={out}", "progress=false"]
    options = ["merge=dare", "merge.combine=ties", "merge.density=0.6", "merge.seed=3", "merge.scale=0.9"]
    assert cli(["merge", *args, *options, "device=cpu"]) == 0
    assert list(workdir.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cwd", "merged"]
    expected = merge(
        llama_family["base"],
        llama_family["experts"][:2],
        "dare",
        combine="ties",
        density=0.6,
        seed=3,
        scale=0.9,
        device="cpu",
        progress=False,
    )
    (written,) = state_dicts([out])
    assert set(written) == set(expected)
    assert all(torch.equal(written[name], expected[name]) for name in expected)


def test_console_errors_are_one_line_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mergelab.cli", "merge", f"base={tmp_path / 'nope'}", "experts=[/x]"]
    result = subprocess.run([*command, f"out={tmp_path / 'out'}"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr == f"mergelab merge: error: base: path does not exist: {tmp_path / 'nope'}\n"
    assert not (tmp_path / "out").exists()
